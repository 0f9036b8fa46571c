/* A persistent pthread pool: workers sleep on a condition variable between
 * jobs, so a parallel_for costs a broadcast and a few lock round trips
 * instead of thread creation. One job runs at a time. */
#include "threadpool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

/* Chunks per thread: enough to even out uneven ranges, few enough that the
 * lock taken per chunk stays cheap. */
#define QPLUG__CHUNKS_PER_THREAD 4

struct qplug__pool {
    int threads;
    int n_workers;
    pthread_t *workers;

    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* a new job or stop */
    pthread_cond_t done_cv; /* the last chunk of a job finished */
    bool stop;
    bool busy;
    uint64_t generation; /* bumped for each job */

    /* The current job, valid while busy. */
    qplug_range_fn fn;
    void *arg;
    int64_t n;
    int64_t n_chunks;
    int64_t next_chunk;
    int64_t chunks_done;
};

/* The bounds of chunk i of n_chunks over [0, n), without overflow. */
static void qplug__chunk_bounds(int64_t n, int64_t n_chunks, int64_t i, int64_t *b, int64_t *e)
{
    int64_t base = n / n_chunks, rem = n % n_chunks;
    *b = i * base + (i < rem ? i : rem);
    *e = *b + base + (i < rem ? 1 : 0);
}

/* Takes and runs chunks of the current job until none is left. Called and
 * returns with pool->mu held. */
static void qplug__pool_drain(qplug__pool *pool)
{
    while (pool->next_chunk < pool->n_chunks) {
        int64_t i = pool->next_chunk++;
        int64_t b, e;
        qplug__chunk_bounds(pool->n, pool->n_chunks, i, &b, &e);
        qplug_range_fn fn = pool->fn;
        void *arg = pool->arg;
        pthread_mutex_unlock(&pool->mu);
        fn(arg, b, e);
        pthread_mutex_lock(&pool->mu);
        if (++pool->chunks_done == pool->n_chunks)
            pthread_cond_signal(&pool->done_cv);
    }
}

static void *qplug__pool_worker(void *p)
{
    qplug__pool *pool = p;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!pool->stop && pool->generation == seen)
            pthread_cond_wait(&pool->work_cv, &pool->mu);
        if (pool->stop)
            break;
        seen = pool->generation;
        qplug__pool_drain(pool);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

/* Stops and joins the first `started` workers and frees the pool. */
static void qplug__pool_teardown(qplug__pool *pool, int started)
{
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < started; i++)
        pthread_join(pool->workers[i], NULL);
    pthread_cond_destroy(&pool->done_cv);
    pthread_cond_destroy(&pool->work_cv);
    pthread_mutex_destroy(&pool->mu);
    free(pool->workers);
    free(pool);
}

qplug_status qplug__pool_create(int threads, qplug__pool **out, qplug_err *err)
{
    *out = NULL;
    if (threads < 1)
        threads = 1;
    qplug__pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "thread pool: out of memory");
    pool->threads = threads;
    pool->n_workers = threads - 1;
    if (pool->n_workers > 0) {
        pool->workers = calloc((size_t)pool->n_workers, sizeof *pool->workers);
        if (!pool->workers) {
            free(pool);
            return qplug_err_set(err, QPLUG_ERR_NOMEM, "thread pool: out of memory");
        }
    }
    if (pthread_mutex_init(&pool->mu, NULL) != 0) {
        free(pool->workers);
        free(pool);
        return qplug_err_set(err, QPLUG_ERR_INTERNAL, "thread pool: cannot create a mutex");
    }
    if (pthread_cond_init(&pool->work_cv, NULL) != 0) {
        pthread_mutex_destroy(&pool->mu);
        free(pool->workers);
        free(pool);
        return qplug_err_set(err, QPLUG_ERR_INTERNAL, "thread pool: cannot create a condition");
    }
    if (pthread_cond_init(&pool->done_cv, NULL) != 0) {
        pthread_cond_destroy(&pool->work_cv);
        pthread_mutex_destroy(&pool->mu);
        free(pool->workers);
        free(pool);
        return qplug_err_set(err, QPLUG_ERR_INTERNAL, "thread pool: cannot create a condition");
    }
    for (int i = 0; i < pool->n_workers; i++) {
        if (pthread_create(&pool->workers[i], NULL, qplug__pool_worker, pool) != 0) {
            qplug__pool_teardown(pool, i);
            return qplug_err_set(err, QPLUG_ERR_INTERNAL,
                                 "thread pool: cannot start worker %d of %d", i + 1,
                                 threads - 1);
        }
    }
    *out = pool;
    return QPLUG_OK;
}

void qplug__pool_destroy(qplug__pool *pool)
{
    if (pool)
        qplug__pool_teardown(pool, pool->n_workers);
}

int qplug__pool_threads(const qplug__pool *pool)
{
    return pool->threads;
}

void qplug__pool_run(qplug__pool *pool, int64_t n, qplug_range_fn fn, void *arg)
{
    if (n <= 0 || !fn)
        return;
    if (n == 1 || pool->n_workers == 0) {
        fn(arg, 0, n);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    if (pool->busy) {
        /* A nested or concurrent call: running inline is always correct,
         * and waiting here could deadlock a nested caller. */
        pthread_mutex_unlock(&pool->mu);
        fn(arg, 0, n);
        return;
    }
    int64_t want = (int64_t)pool->threads * QPLUG__CHUNKS_PER_THREAD;
    pool->busy = true;
    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    pool->n_chunks = n < want ? n : want;
    pool->next_chunk = 0;
    pool->chunks_done = 0;
    pool->generation++;
    pthread_cond_broadcast(&pool->work_cv);
    qplug__pool_drain(pool);
    while (pool->chunks_done < pool->n_chunks)
        pthread_cond_wait(&pool->done_cv, &pool->mu);
    pool->busy = false;
    pool->fn = NULL;
    pool->arg = NULL;
    pthread_mutex_unlock(&pool->mu);
}
