#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int qplug_test_passed;
int qplug_test_failed;

int test_done(void)
{
    printf("%d passed, %d failed\n", qplug_test_passed, qplug_test_failed);
    return qplug_test_failed ? 1 : 0;
}

const char *test_tmpdir(void)
{
    static char dir[256];
    if (!dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/qplug-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return dir;
}

const char *test_write_file(const char *name, const void *data, size_t len)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len)) {
        perror(path);
        exit(2);
    }
    fclose(f);
    return path;
}

qplug_status test_stub_create(const qplug_host *h, const qplug_layer_desc *l)
{
    (void)h;
    (void)l;
    return QPLUG_ERR_UNSUPPORTED;
}

qplug_status test_stub_process(const qplug_host *h, const qplug_layer_desc *l, void **state)
{
    (void)h;
    (void)l;
    *state = NULL;
    return QPLUG_ERR_UNSUPPORTED;
}

qplug_status test_stub_apply(const qplug_host *h, void *state, const qplug_apply_args *a)
{
    (void)h;
    (void)state;
    (void)a;
    return QPLUG_ERR_UNSUPPORTED;
}

void test_stub_destroy(const qplug_host *h, void *state)
{
    (void)h;
    (void)state;
}
