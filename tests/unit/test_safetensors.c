/* safetensors reader, writer and checkpoint directories. Expected values
 * (byte counts, offsets) are computed by hand in the comments. */
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qplug/safetensors.h"
#include "testutil.h"

/* A file image: 8-byte little-endian length, the header, then `payload`
 * bytes of 0xAB. */
static uint8_t *image(const char *header, size_t payload, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + payload;
    uint8_t *b = malloc(*len ? *len : 1);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    memset(b + 8 + h, 0xAB, payload);
    return b;
}

/* Opens a header from memory and expects failure with `status` and a
 * message naming the source and `what`. */
static void expect_bad(const char *case_name, const char *header, size_t payload,
                       qplug_status status, const char *what)
{
    size_t len;
    uint8_t *b = image(header, payload, &len);
    qplug_st_file *f = (qplug_st_file *)1;
    qplug_err err = {0};
    qplug_status st = qplug_st_open_memory(b, len, "hostile.safetensors", &f, &err);
    CHECKF(st == status, "%s: status %s, expected %s (%s)", case_name, qplug_status_name(st),
           qplug_status_name(status), err.msg);
    CHECKF(f == NULL, "%s: no file handed out", case_name);
    CHECKF(strstr(err.msg, "hostile.safetensors") != NULL, "%s: message names the file: %s",
           case_name, err.msg);
    CHECKF(!what || strstr(err.msg, what) != NULL, "%s: message names \"%s\": %s", case_name,
           what ? what : "", err.msg);
    CHECKF(strchr(err.msg, '\n') == NULL, "%s: one line", case_name);
    free(b);
}

static void test_hostile(void)
{
    /* Shorter than the 8-byte length prefix. */
    {
        uint8_t b[5] = {1, 0, 0, 0, 0};
        qplug_st_file *f;
        qplug_err err = {0};
        CHECK(qplug_st_open_memory(b, sizeof b, "hostile.safetensors", &f, &err) == QPLUG_ERR_FORMAT);
        CHECK(strstr(err.msg, "truncated") != NULL);
    }
    /* A header length of 2^40: above the 100 MiB limit. */
    {
        uint8_t b[16] = {0, 0, 0, 0, 0, 1, 0, 0, '{', '}'};
        qplug_st_file *f;
        qplug_err err = {0};
        CHECK(qplug_st_open_memory(b, sizeof b, "hostile.safetensors", &f, &err) == QPLUG_ERR_FORMAT);
        CHECKF(strstr(err.msg, "1099511627776") != NULL, "%s", err.msg);
    }
    /* A header length of 100 in a 16-byte file: beyond the end. */
    {
        uint8_t b[16] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
        qplug_st_file *f;
        qplug_err err = {0};
        CHECK(qplug_st_open_memory(b, sizeof b, "hostile.safetensors", &f, &err) == QPLUG_ERR_FORMAT);
        CHECKF(strstr(err.msg, "past the end") != NULL, "%s", err.msg);
    }
    expect_bad("non-JSON", "{\"a\": {\"dtype\": \"F32\",", 0, QPLUG_ERR_FORMAT, "not valid JSON");
    expect_bad("empty header", "", 0, QPLUG_ERR_FORMAT, "not valid JSON");
    expect_bad("non-object", "[1, 2, 3]", 0, QPLUG_ERR_FORMAT, "not a JSON object");
    expect_bad("entry not object", "{\"w\": 3}", 0, QPLUG_ERR_FORMAT, "\"w\"");
    expect_bad("bad dtype", "{\"w\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16,
               QPLUG_ERR_DTYPE, "F128");
    expect_bad("dtype not string", "{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               QPLUG_ERR_FORMAT, "\"w\"");
    expect_bad("negative shape", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
               QPLUG_ERR_SHAPE, "\"w\"");
    expect_bad("fractional shape", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}",
               4, QPLUG_ERR_SHAPE, "shape[0]");
    /* 2^40 * 2^40 elements overflow 64 bits. */
    expect_bad("huge shape",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
               "\"data_offsets\":[0,4]}}",
               4, QPLUG_ERR_SHAPE, "\"w\"");
    expect_bad("five dims",
               "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
               QPLUG_ERR_SHAPE, "5 dimensions");
    /* F32 [2,3] needs 24 bytes; 20 are given. */
    expect_bad("byte count", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24,
               QPLUG_ERR_SHAPE, "need 24 bytes");
    /* Packed FP4 [5] needs ceil(5/2) = 3 bytes, not 5 and not 2. */
    expect_bad("F4 as bytes", "{\"w\":{\"dtype\":\"F4\",\"shape\":[5],\"data_offsets\":[0,5]}}", 5,
               QPLUG_ERR_SHAPE, "need 3 bytes");
    expect_bad("F4 rounded down", "{\"w\":{\"dtype\":\"F4\",\"shape\":[5],\"data_offsets\":[0,2]}}", 5,
               QPLUG_ERR_SHAPE, "need 3 bytes");
    expect_bad("offsets out of range",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 16,
               QPLUG_ERR_FORMAT, "outside the payload");
    expect_bad("offsets reversed", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}",
               16, QPLUG_ERR_FORMAT, "\"w\"");
    expect_bad("offsets not pair", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
               QPLUG_ERR_FORMAT, "data_offsets");
    /* a = [0,16), b = [8,24): they share bytes 8..15. */
    expect_bad("overlap",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
               24, QPLUG_ERR_FORMAT, "overlap");
    expect_bad("duplicate key",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, QPLUG_ERR_DUPLICATE, "\"a\"");
    expect_bad("missing dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, QPLUG_ERR_FORMAT,
               "missing \"dtype\"");
    expect_bad("unknown key",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
               QPLUG_ERR_FORMAT, "\"x\"");
    expect_bad("metadata value", "{\"__metadata__\":{\"format\":1}}", 0, QPLUG_ERR_FORMAT,
               "\"format\"");
    expect_bad("metadata not object", "{\"__metadata__\":[]}", 0, QPLUG_ERR_FORMAT, "__metadata__");
    expect_bad("trailing garbage", "{} x", 0, QPLUG_ERR_FORMAT, "after the header");
    expect_bad("empty name", "{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
               QPLUG_ERR_FORMAT, "empty name");

    /* A NUL byte inside the header (after valid JSON) is corruption. */
    {
        size_t len;
        uint8_t *b = image("{}  ", 0, &len);
        b[8 + 2] = 0;
        qplug_st_file *f;
        qplug_err err = {0};
        CHECK(qplug_st_open_memory(b, len, "hostile.safetensors", &f, &err) == QPLUG_ERR_FORMAT);
        free(b);
    }
    /* A file that is not there. */
    {
        qplug_st_file *f;
        qplug_err err = {0};
        char path[600];
        snprintf(path, sizeof path, "%s/absent.safetensors", test_tmpdir());
        CHECK(qplug_st_open(path, &f, &err) == QPLUG_ERR_NOT_FOUND);
        CHECK(strstr(err.msg, "absent.safetensors") != NULL);
    }
}

static void test_valid_memory(void)
{
    /* Padding spaces, metadata, an empty tensor inside another's range
     * (occupies nothing) and a gap between tensors are all fine. */
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]},"
                    "\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]},"
                    "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[10,10]},"
                    "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[16,24]}}    ";
    size_t len;
    uint8_t *b = image(h, 24, &len);
    qplug_st_file *f = NULL;
    qplug_err err = {0};
    CHECKF(qplug_st_open_memory(b, len, "mem", &f, &err) == QPLUG_OK, "%s", err.msg);
    if (f) {
        CHECK(qplug_st_count(f) == 4);
        const qplug_tensor *t = qplug_st_tensor(f, 0);
        CHECK(t && strcmp(t->name, "b") == 0 && t->dtype == QPLUG_DT_BF16 && t->ndim == 2);
        CHECK(t && (const uint8_t *)t->data == b + 8 + strlen(h) + 8);
        t = qplug_st_find(f, "a");
        CHECK(t && t->dtype == QPLUG_DT_E2M1 && t->shape[0] == 3 && qplug_tensor_nbytes(t) == 2);
        t = qplug_st_find(f, "s");
        CHECK(t && t->ndim == 0 && qplug_tensor_nbytes(t) == 8);
        CHECK(qplug_st_find(f, "zz") == NULL);
        CHECK(qplug_st_find(f, "__metadata__") == NULL);
        CHECK(qplug_st_tensor(f, 4) == NULL);
        qplug_st_close(f);
    }
    free(b);
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* No "*.tmp.*" left behind in `dir`. */
static int no_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *de;
    int ok = 1;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, ".tmp."))
            ok = 0;
    closedir(d);
    return ok;
}

static void test_write_read(void)
{
    float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f};
    uint16_t bf16[4] = {0x3f80, 0xbf80, 0x4000, 0x0000};
    uint8_t fp4[2] = {0x21, 0x07}; /* 3 elements packed into 2 bytes */
    int8_t i8[4] = {-1, 2, -3, 4};
    qplug_tensor ts[4] = {
        {.name = "layers.0.w", .dtype = QPLUG_DT_F32, .ndim = 2, .shape = {2, 3}, .data = f32},
        {.name = "with \"quote\"\\", .dtype = QPLUG_DT_BF16, .ndim = 1, .shape = {4}, .data = bf16},
        {.name = "fp4", .dtype = QPLUG_DT_E2M1, .ndim = 1, .shape = {3}, .data = fp4},
        {.name = "i8", .dtype = QPLUG_DT_I8, .ndim = 2, .shape = {2, 2}, .data = i8},
    };
    char path[600];
    snprintf(path, sizeof path, "%s/rw.safetensors", test_tmpdir());
    qplug_err err = {0};
    CHECKF(qplug_st_write(path, ts, 4, &err) == QPLUG_OK, "%s", err.msg);
    CHECK(no_temp_files(test_tmpdir()));

    /* The payload starts 8-byte aligned: (8 + header length) % 8 == 0. */
    FILE *fp = fopen(path, "rb");
    uint8_t len8[8] = {0};
    CHECK(fp && fread(len8, 1, 8, fp) == 8);
    if (fp)
        fclose(fp);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    CHECKF((8 + hlen) % 8 == 0, "header length %llu", (unsigned long long)hlen);

    qplug_st_file *f = NULL;
    CHECKF(qplug_st_open(path, &f, &err) == QPLUG_OK, "%s", err.msg);
    if (!f)
        return;
    CHECK(qplug_st_count(f) == 4);
    CHECK(strcmp(qplug_st_path(f), path) == 0);
    for (int i = 0; i < 4; i++) {
        const qplug_tensor *t = qplug_st_find(f, ts[i].name);
        CHECKF(t != NULL, "tensor %s", ts[i].name);
        if (!t)
            continue;
        CHECK(t->dtype == ts[i].dtype && t->ndim == ts[i].ndim);
        CHECK(t->shape[0] == ts[i].shape[0] && t->shape[1] == ts[i].shape[1]);
        CHECK(qplug_tensor_nbytes(t) == qplug_tensor_nbytes(&ts[i]));
        CHECK(memcmp(t->data, ts[i].data, qplug_tensor_nbytes(t)) == 0);
        CHECK(t == qplug_st_tensor(f, (size_t)i));
    }
    /* Byte counts by hand: 24 + 8 + 2 + 4 = 38 payload bytes. */
    CHECK(qplug_tensor_nbytes(qplug_st_find(f, "fp4")) == 2);
    qplug_st_close(f);

    /* Failures leave nothing behind: a duplicate name, NULL data, a
     * directory that does not exist. */
    char bad[600];
    snprintf(bad, sizeof bad, "%s/bad.safetensors", test_tmpdir());
    qplug_tensor dup[2] = {ts[0], ts[0]};
    CHECK(qplug_st_write(bad, dup, 2, &err) == QPLUG_ERR_DUPLICATE);
    qplug_tensor nodata = ts[0];
    nodata.data = NULL;
    CHECK(qplug_st_write(bad, &nodata, 1, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(strstr(err.msg, "layers.0.w") != NULL);
    CHECK(!file_exists(bad));
    CHECK(no_temp_files(test_tmpdir()));
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/x.safetensors", test_tmpdir());
    CHECK(qplug_st_write(nodir, ts, 1, &err) == QPLUG_ERR_IO);
}

static void write_shard(const char *dir, const char *file, const char *const *names, size_t n)
{
    static float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    qplug_tensor ts[8];
    for (size_t i = 0; i < n; i++)
        ts[i] = (qplug_tensor){.name = names[i], .dtype = QPLUG_DT_F32, .ndim = 1,
                               .shape = {(int64_t)(i + 1)}, .data = data};
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    qplug_err err = {0};
    CHECKF(qplug_st_write(path, ts, n, &err) == QPLUG_OK, "%s", err.msg);
}

static void write_text(const char *dir, const char *file, const char *text)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *fp = fopen(path, "w");
    CHECK(fp != NULL);
    if (fp) {
        fputs(text, fp);
        fclose(fp);
    }
}

static const char *mkdir_case(const char *name)
{
    static char dir[600];
    snprintf(dir, sizeof dir, "%s/%s", test_tmpdir(), name);
    mkdir(dir, 0755);
    return dir;
}

static void expect_ckpt_error(const char *dir, qplug_status status, const char *a, const char *b)
{
    qplug_ckpt *c = (qplug_ckpt *)1;
    qplug_err err = {0};
    qplug_status st = qplug_ckpt_open(dir, &c, &err);
    CHECKF(st == status, "%s: got %s (%s)", dir, qplug_status_name(st), err.msg);
    CHECK(c == NULL);
    CHECKF(!a || strstr(err.msg, a), "message names %s: %s", a, err.msg);
    CHECKF(!b || strstr(err.msg, b), "message names %s: %s", b, err.msg);
}

static void test_checkpoints(void)
{
    const char *s1[] = {"embed.weight", "layers.0.attn.wq_a.weight"};
    const char *s2[] = {"layers.1.attn.wq_a.weight", "head.weight", "norm.weight"};
    const char *index =
        "{\"metadata\":{\"total_size\":1},\"weight_map\":{"
        "\"embed.weight\":\"model-00001-of-00002.safetensors\","
        "\"layers.0.attn.wq_a.weight\":\"model-00001-of-00002.safetensors\","
        "\"layers.1.attn.wq_a.weight\":\"model-00002-of-00002.safetensors\","
        "\"head.weight\":\"model-00002-of-00002.safetensors\","
        "\"norm.weight\":\"model-00002-of-00002.safetensors\"}}";

    /* A good sharded checkpoint. */
    const char *dir = mkdir_case("sharded");
    write_shard(dir, "model-00001-of-00002.safetensors", s1, 2);
    write_shard(dir, "model-00002-of-00002.safetensors", s2, 3);
    write_text(dir, "model.safetensors.index.json", index);
    qplug_ckpt *c = NULL;
    qplug_err err = {0};
    CHECKF(qplug_ckpt_open(dir, &c, &err) == QPLUG_OK, "%s", err.msg);
    if (c) {
        CHECK(qplug_ckpt_count(c) == 5);
        CHECK(strcmp(qplug_ckpt_dir(c), dir) == 0);
        long k = qplug_ckpt_lookup(c, "head.weight");
        CHECK(k >= 0);
        if (k >= 0) {
            CHECK(strcmp(qplug_ckpt_tensor(c, (size_t)k)->name, "head.weight") == 0);
            CHECK(strstr(qplug_ckpt_tensor_file(c, (size_t)k), "model-00002-of-00002") != NULL);
        }
        CHECK(qplug_ckpt_lookup(c, "nope") == -1);
        /* Shapes [1],[2] and [1],[2],[3] of F32: (1+2+1+2+3)*4 = 36 bytes. */
        CHECK(qplug_ckpt_bytes(c) == 36);
        qplug_ckpt_close(c);
    }

    /* The index names a shard that is not there. */
    dir = mkdir_case("missing-shard");
    write_shard(dir, "model-00001-of-00002.safetensors", s1, 2);
    write_text(dir, "model.safetensors.index.json", index);
    expect_ckpt_error(dir, QPLUG_ERR_NOT_FOUND, "model-00002-of-00002.safetensors",
                      "model.safetensors.index.json");

    /* The index maps a tensor to a shard that lacks it. */
    dir = mkdir_case("absent-tensor");
    const char *s2_short[] = {"layers.1.attn.wq_a.weight", "head.weight"};
    write_shard(dir, "model-00001-of-00002.safetensors", s1, 2);
    write_shard(dir, "model-00002-of-00002.safetensors", s2_short, 2);
    write_text(dir, "model.safetensors.index.json", index);
    expect_ckpt_error(dir, QPLUG_ERR_NOT_FOUND, "norm.weight", "model-00002-of-00002.safetensors");

    /* A shard holds a tensor the index does not list. */
    dir = mkdir_case("unlisted-tensor");
    const char *s2_long[] = {"layers.1.attn.wq_a.weight", "head.weight", "norm.weight", "extra"};
    write_shard(dir, "model-00001-of-00002.safetensors", s1, 2);
    write_shard(dir, "model-00002-of-00002.safetensors", s2_long, 4);
    write_text(dir, "model.safetensors.index.json", index);
    expect_ckpt_error(dir, QPLUG_ERR_FORMAT, "\"extra\"", "model-00002-of-00002.safetensors");

    /* The index maps a tensor to the wrong shard. */
    dir = mkdir_case("wrong-shard");
    const char *s1_b[] = {"embed.weight", "layers.0.attn.wq_a.weight", "norm.weight"};
    const char *s2_b[] = {"layers.1.attn.wq_a.weight", "head.weight"};
    write_shard(dir, "model-00001-of-00002.safetensors", s1_b, 3);
    write_shard(dir, "model-00002-of-00002.safetensors", s2_b, 2);
    write_text(dir, "model.safetensors.index.json", index);
    expect_ckpt_error(dir, QPLUG_ERR_FORMAT, "norm.weight", "model-00001-of-00002.safetensors");

    /* A shard name that leaves the directory. */
    dir = mkdir_case("escape");
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"../sharded/model-00001-of-00002.safetensors\"}}");
    expect_ckpt_error(dir, QPLUG_ERR_FORMAT, "\"a\"", NULL);

    /* An index without weight_map, and one that is not JSON. */
    dir = mkdir_case("no-weight-map");
    write_text(dir, "model.safetensors.index.json", "{\"metadata\":{}}");
    expect_ckpt_error(dir, QPLUG_ERR_FORMAT, "weight_map", NULL);
    dir = mkdir_case("bad-index");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":");
    expect_ckpt_error(dir, QPLUG_ERR_FORMAT, "model.safetensors.index.json", NULL);

    /* model.safetensors alone. */
    dir = mkdir_case("single");
    write_shard(dir, "model.safetensors", s2, 3);
    c = NULL;
    CHECKF(qplug_ckpt_open(dir, &c, &err) == QPLUG_OK, "%s", err.msg);
    if (c) {
        CHECK(qplug_ckpt_count(c) == 3);
        qplug_ckpt_close(c);
    }

    /* Every *.safetensors, sorted: b.safetensors then c.safetensors. */
    dir = mkdir_case("glob");
    write_shard(dir, "c.safetensors", s1, 2);
    write_shard(dir, "b.safetensors", s2, 3);
    write_text(dir, "notes.txt", "not a shard");
    c = NULL;
    CHECKF(qplug_ckpt_open(dir, &c, &err) == QPLUG_OK, "%s", err.msg);
    if (c) {
        CHECK(qplug_ckpt_count(c) == 5);
        CHECK(strcmp(qplug_ckpt_tensor(c, 0)->name, "layers.1.attn.wq_a.weight") == 0);
        CHECK(strstr(qplug_ckpt_tensor_file(c, 4), "c.safetensors") != NULL);
        qplug_ckpt_close(c);
    }

    /* The same tensor in two files of a glob checkpoint. */
    dir = mkdir_case("glob-dup");
    write_shard(dir, "a.safetensors", s1, 2);
    write_shard(dir, "b.safetensors", s1, 1);
    expect_ckpt_error(dir, QPLUG_ERR_DUPLICATE, "embed.weight", "b.safetensors");

    /* Nothing at all. */
    dir = mkdir_case("empty");
    expect_ckpt_error(dir, QPLUG_ERR_NOT_FOUND, "empty", NULL);
}

/* Many tensors: every name is found through the sorted table. */
static void test_many(void)
{
    enum { N = 20000 };
    qplug_tensor *ts = calloc(N, sizeof *ts);
    char(*names)[32] = calloc(N, sizeof *names);
    uint8_t one = 7;
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "layers.%d.w%d", i % 61, i);
        ts[i] = (qplug_tensor){.name = names[i], .dtype = QPLUG_DT_U8, .ndim = 1, .shape = {1},
                               .data = &one};
    }
    char path[600];
    snprintf(path, sizeof path, "%s/many.safetensors", test_tmpdir());
    qplug_err err = {0};
    CHECKF(qplug_st_write(path, ts, N, &err) == QPLUG_OK, "%s", err.msg);
    qplug_st_file *f = NULL;
    CHECKF(qplug_st_open(path, &f, &err) == QPLUG_OK, "%s", err.msg);
    if (f) {
        int found = 0;
        for (int i = 0; i < N; i++) {
            const qplug_tensor *t = qplug_st_find(f, names[i]);
            found += t && strcmp(t->name, names[i]) == 0 && *(const uint8_t *)t->data == 7;
        }
        CHECK(found == N);
        qplug_st_close(f);
    }
    free(ts);
    free(names);
}

int main(void)
{
    test_hostile();
    test_valid_memory();
    test_write_read();
    test_checkpoints();
    test_many();
    return test_done();
}
