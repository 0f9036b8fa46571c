/* The INI deployment policy: every key, every error with its line. */
#include <string.h>

#include "qplug/policy.h"
#include "testutil.h"

static qplug_status parse(const char *text, qplug_policy *pol, qplug_err *err)
{
    err->msg[0] = '\0';
    return qplug_policy_parse(text, strlen(text), "deploy.ini", pol, err);
}

/* Expects `status` and a message starting "deploy.ini:LINE:" naming `what`. */
static void expect(const char *name, const char *text, qplug_status status, int line, const char *what)
{
    qplug_policy pol;
    qplug_err err = {0};
    qplug_status st = parse(text, &pol, &err);
    CHECKF(st == status, "%s: got %s (%s)", name, qplug_status_name(st), err.msg);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "deploy.ini:%d: ", line);
    CHECKF(strncmp(err.msg, prefix, strlen(prefix)) == 0, "%s: expected \"%s...\", got \"%s\"", name,
           prefix, err.msg);
    CHECKF(!what || strstr(err.msg, what), "%s: names %s: %s", name, what, err.msg);
    CHECK(pol.n_rules == 0 && pol.rules == NULL && pol.dirs == NULL);
    qplug_policy_free(&pol);
}

static void test_good(void)
{
    const char *text = "; deployment policy\n"
                       "[plugins]\n"
                       "dirs = /opt/qplug/plugins.d::/usr/lib/qplug\n"
                       "\n"
                       "[rule megamoe]                ; first match wins\n"
                       "match = layers.*.ffn.experts\n"
                       "plugin = w4a4_megamoe\n"
                       "[rule keep-head]\n"
                       "plugin = unquantized\n"
                       "match = head\n"
                       "[megamoe]\n"
                       "fp4_activations = true\n"
                       "[runtime]\n"
                       "device = cuda\n"
                       "threads = 12\n";
    qplug_policy pol;
    qplug_err err = {0};
    CHECKF(parse(text, &pol, &err) == QPLUG_OK, "%s", err.msg);
    CHECK(strcmp(pol.path, "deploy.ini") == 0);
    CHECK(pol.n_dirs == 2);
    if (pol.n_dirs == 2) {
        CHECK(strcmp(pol.dirs[0], "/opt/qplug/plugins.d") == 0);
        CHECK(strcmp(pol.dirs[1], "/usr/lib/qplug") == 0);
    }
    CHECK(pol.n_rules == 2);
    if (pol.n_rules == 2) {
        CHECK(strcmp(pol.rules[0].name, "megamoe") == 0 && pol.rules[0].line == 5);
        CHECK(strcmp(pol.rules[0].match, "layers.*.ffn.experts") == 0);
        CHECK(strcmp(pol.rules[0].plugin, "w4a4_megamoe") == 0);
        CHECK(strcmp(pol.rules[1].name, "keep-head") == 0 && pol.rules[1].line == 8);
        CHECK(strcmp(pol.rules[1].plugin, "unquantized") == 0 && strcmp(pol.rules[1].match, "head") == 0);
    }
    CHECK(pol.fp4_activations && pol.device == QPLUG_DEVPREF_CUDA && pol.threads == 12);
    CHECK(strcmp(qplug_policy_option(&pol, "megamoe", "fp4_activations"), "true") == 0);
    CHECK(strcmp(qplug_policy_option(&pol, "runtime", "device"), "cuda") == 0);
    CHECK(qplug_policy_option(&pol, "megamoe", "nope") == NULL);
    qplug_policy_free(&pol);
    CHECK(pol.n_rules == 0 && pol.rules == NULL);

    /* Defaults: the empty policy. */
    qplug_policy_init(&pol);
    CHECK(!pol.fp4_activations && pol.device == QPLUG_DEVPREF_AUTO && pol.threads == 0);
    CHECK(strcmp(qplug_policy_option(&pol, "megamoe", "fp4_activations"), "false") == 0);
    CHECK(parse("", &pol, &err) == QPLUG_OK && pol.n_rules == 0);
    qplug_policy_free(&pol);
    CHECK(parse("[megamoe]\nfp4_activations = false\n[runtime]\nthreads = 0\ndevice = cpu", &pol, &err) ==
          QPLUG_OK);
    CHECK(!pol.fp4_activations && pol.threads == 0 && pol.device == QPLUG_DEVPREF_CPU);
    qplug_policy_free(&pol);

    /* From a file, with a byte order mark and CRLF line ends. */
    const char *file_text = "\xEF\xBB\xBF[rule a]\r\nmatch = layers.1.*\r\nplugin = fp8_block\r\n";
    const char *path = test_write_file("policy.ini", file_text, strlen(file_text));
    CHECKF(qplug_policy_load(path, &pol, &err) == QPLUG_OK, "%s", err.msg);
    CHECK(pol.n_rules == 1 && strcmp(pol.rules[0].match, "layers.1.*") == 0);
    CHECK(strcmp(pol.path, path) == 0);
    qplug_policy_free(&pol);
    CHECK(qplug_policy_load("/nonexistent/qplug.ini", &pol, &err) == QPLUG_ERR_NOT_FOUND);
    CHECK(strstr(err.msg, "/nonexistent/qplug.ini") != NULL);
}

static void test_errors(void)
{
    expect("unknown section", "[plugins]\ndirs = /a\n[quantum]\nx = 1\n", QPLUG_ERR_POLICY, 3, "[quantum]");
    expect("empty unknown section", "\n[bogus]\n", QPLUG_ERR_POLICY, 2, "[bogus]");
    expect("unknown plugins key", "[plugins]\npath = /a\n", QPLUG_ERR_POLICY, 2, "\"path\"");
    expect("unknown rule key", "[rule a]\nmatch = x\nplugin = y\nscore = 3\n", QPLUG_ERR_POLICY, 4, "\"score\"");
    expect("unknown megamoe key", "[megamoe]\nfp8 = true\n", QPLUG_ERR_POLICY, 2, "\"fp8\"");
    expect("unknown runtime key", "[runtime]\n\ngpus = 2\n", QPLUG_ERR_POLICY, 3, "\"gpus\"");
    expect("key outside section", "device = cpu\n", QPLUG_ERR_POLICY, 1, "\"device\"");
    expect("duplicate rule", "[rule a]\nmatch = x\nplugin = y\n[rule a]\nmatch = z\nplugin = y\n",
           QPLUG_ERR_DUPLICATE, 4, "\"a\"");
    expect("rule without match", "[rule a]\nplugin = y\n[runtime]\ndevice = cpu\n", QPLUG_ERR_POLICY, 1,
           "missing \"match\"");
    expect("rule without plugin", "[runtime]\n[rule b]\nmatch = x\n", QPLUG_ERR_POLICY, 2,
           "missing \"plugin\"");
    expect("empty rule", "[rule c]\n", QPLUG_ERR_POLICY, 1, "[rule c]");
    expect("rule without name", "[rule ]\nmatch = x\nplugin = y\n", QPLUG_ERR_POLICY, 1, "rule");
    expect("bad rule name", "[rule a/b]\nmatch = x\nplugin = y\n", QPLUG_ERR_POLICY, 1, "a/b");
    expect("empty match", "[rule a]\nmatch =\nplugin = y\n", QPLUG_ERR_POLICY, 2, "\"match\"");
    expect("bad plugin name", "[rule a]\nmatch = x\nplugin = my plugin\n", QPLUG_ERR_POLICY, 3, "my plugin");
    expect("duplicate key", "[rule a]\nmatch = x\nmatch = y\nplugin = z\n", QPLUG_ERR_POLICY, 3, "\"match\"");
    expect("duplicate section", "[runtime]\ndevice = cpu\n[runtime]\n", QPLUG_ERR_POLICY, 3, "[runtime]");
    expect("bad boolean", "[megamoe]\nfp4_activations = yes please\n", QPLUG_ERR_POLICY, 2, "yes please");
    expect("bad enum", "[runtime]\ndevice = tpu\n", QPLUG_ERR_POLICY, 2, "\"tpu\"");
    expect("bad integer", "[runtime]\nthreads = 4x\n", QPLUG_ERR_POLICY, 2, "\"4x\"");
    expect("negative integer", "[runtime]\nthreads = -1\n", QPLUG_ERR_POLICY, 2, "\"-1\"");
    expect("huge integer", "[runtime]\nthreads = 99999999999999999999\n", QPLUG_ERR_POLICY, 2, "threads");
    expect("syntax", "[runtime]\ndevice cpu\n", QPLUG_ERR_POLICY, 2, "syntax");
    expect("unclosed section", "[runtime\n", QPLUG_ERR_POLICY, 1, "syntax");
    expect("indented header", "[rule a]\nmatch = x\n  [rule b]\nplugin = y\n", QPLUG_ERR_POLICY, 3, "indented");
    expect("continuation", "[plugins]\ndirs = /a\n  /b\n", QPLUG_ERR_POLICY, 3, "\"dirs\"");
    {
        char text[400];
        memset(text, 'x', sizeof text);
        memcpy(text, "[runtime]\ndevice = ", 19);
        text[sizeof text - 1] = '\0';
        expect("long line", text, QPLUG_ERR_POLICY, 2, "longer than");
    }
    {
        char text[100];
        snprintf(text, sizeof text, "[rule %s]\nmatch = x\nplugin = y\n",
                 "a123456789012345678901234567890123456789012345678");
        expect("long section", text, QPLUG_ERR_POLICY, 1, "section name");
    }
    {
        const char text[] = "[runtime]\ndevice = cpu\0\n";
        qplug_policy pol;
        qplug_err err = {0};
        CHECK(qplug_policy_parse(text, sizeof text - 1, "deploy.ini", &pol, &err) == QPLUG_ERR_POLICY);
        CHECKF(strncmp(err.msg, "deploy.ini:2: ", 14) == 0, "%s", err.msg);
    }
}

int main(void)
{
    test_good();
    test_errors();
    return test_done();
}
