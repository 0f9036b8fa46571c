/*
 * forward_ops.c - the fp32 building blocks of the DeepSeek V4 forward pass:
 * RMSNorm, hyper-connections with Sinkhorn, rope (plain and yarn), router,
 * top-k, compressor pooling and one attention head. Pure functions with no
 * allocation, so the unit tests can check each against torch.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "forward_internal.h"

void qplug__fw_rmsnorm(const float *x, const float *w, int64_t d, float eps, float *y)
{
    /* fp32 accumulation as torch does for fp32 tensors; the sum runs in
     * double here only to keep long rows stable. */
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++)
        ss += (double)x[i] * x[i];
    float r = 1.0f / sqrtf((float)(ss / (double)d) + eps);
    for (int64_t i = 0; i < d; i++)
        y[i] = (w ? w[i] : 1.0f) * (x[i] * r);
}

static float sigmoidf(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

void qplug__fw_sinkhorn(float *comb, int hc, int iters, float eps)
{
    /* The first step after the row softmax is a column normalisation; the
     * remaining iters - 1 rounds alternate rows then columns (transformers'
     * DeepseekV4HyperConnection). */
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
            for (int j = 0; j < hc; j++) {
                float s = 0.0f;
                for (int k = 0; k < hc; k++)
                    s += comb[j * hc + k];
                for (int k = 0; k < hc; k++)
                    comb[j * hc + k] /= s + eps;
            }
        }
        for (int k = 0; k < hc; k++) {
            float s = 0.0f;
            for (int j = 0; j < hc; j++)
                s += comb[j * hc + k];
            for (int j = 0; j < hc; j++)
                comb[j * hc + k] /= s + eps;
        }
    }
}

/* mixes[i] = (fn[i] . X) / rms(X) for `nmix` rows of fn [nmix][hc*D]. */
static void hc_mixes(const float *X, int64_t flat, const float *fn, int nmix, float norm_eps,
                     float *mixes)
{
    double ss = 0.0;
    for (int64_t i = 0; i < flat; i++)
        ss += (double)X[i] * X[i];
    float r = 1.0f / sqrtf((float)(ss / (double)flat) + norm_eps);
    for (int m = 0; m < nmix; m++) {
        const float *f = fn + (int64_t)m * flat;
        float acc = 0.0f;
        for (int64_t i = 0; i < flat; i++)
            acc += f[i] * (X[i] * r);
        mixes[m] = acc;
    }
}

void qplug__fw_hc_pre(const float *X, int hc, int64_t D, const float *fn, const float *base,
                      const float *scale, int iters, float hc_eps, float norm_eps, float *post,
                      float *comb, float *y)
{
    int nmix = (2 + hc) * hc;
    float mixes[(2 + 16) * 16];
    float pre[16];
    hc_mixes(X, hc * D, fn, nmix, norm_eps, mixes);
    for (int j = 0; j < hc; j++) {
        pre[j] = sigmoidf(mixes[j] * scale[0] + base[j]) + hc_eps;
        post[j] = 2.0f * sigmoidf(mixes[hc + j] * scale[1] + base[hc + j]);
    }
    for (int j = 0; j < hc; j++) {
        float *row = comb + j * hc;
        float mx = -INFINITY, s = 0.0f;
        for (int k = 0; k < hc; k++) {
            row[k] = mixes[2 * hc + j * hc + k] * scale[2] + base[2 * hc + j * hc + k];
            mx = row[k] > mx ? row[k] : mx;
        }
        for (int k = 0; k < hc; k++) {
            row[k] = expf(row[k] - mx);
            s += row[k];
        }
        for (int k = 0; k < hc; k++)
            row[k] = row[k] / s + hc_eps;
    }
    qplug__fw_sinkhorn(comb, hc, iters, hc_eps);
    for (int64_t d = 0; d < D; d++) {
        float acc = 0.0f;
        for (int j = 0; j < hc; j++)
            acc += pre[j] * X[j * D + d];
        y[d] = acc;
    }
}

void qplug__fw_hc_post(float *X, int hc, int64_t D, const float *post, const float *comb,
                       const float *f)
{
    float col[16];
    for (int64_t d = 0; d < D; d++) {
        for (int j = 0; j < hc; j++)
            col[j] = X[j * D + d];
        for (int k = 0; k < hc; k++) {
            float acc = post[k] * f[d];
            for (int j = 0; j < hc; j++)
                acc += comb[j * hc + k] * col[j];
            X[k * D + d] = acc;
        }
    }
}

void qplug__fw_hc_head(const float *X, int hc, int64_t D, const float *fn, const float *base,
                       const float *scale, float hc_eps, float norm_eps, float *y)
{
    float mixes[16], pre[16];
    hc_mixes(X, hc * D, fn, hc, norm_eps, mixes);
    for (int j = 0; j < hc; j++)
        pre[j] = sigmoidf(mixes[j] * scale[0] + base[j]) + hc_eps;
    for (int64_t d = 0; d < D; d++) {
        float acc = 0.0f;
        for (int j = 0; j < hc; j++)
            acc += pre[j] * X[j * D + d];
        y[d] = acc;
    }
}

/* transformers' find_correction_dim: the dimension whose wavelength makes
 * `rot` full turns over `max_pos` positions. */
static double correction_dim(double rot, int dim, double base, double max_pos)
{
    return (dim * log(max_pos / (rot * 2.0 * M_PI))) / (2.0 * log(base));
}

void qplug__fw_rope_freqs(double theta, int rd, const qplug__fw_yarn *yarn, float *inv_freq)
{
    int half = rd / 2;
    for (int i = 0; i < half; i++) {
        float pf = powf((float)theta, (float)(2 * i) / (float)rd);
        inv_freq[i] = 1.0f / pf;
    }
    /* A factor of 1 blends identical frequencies: plain rope. */
    if (!yarn || yarn->factor <= 1.0)
        return;
    /* yarn (transformers _compute_yarn_parameters, truncate = true): blend
     * the interpolated and extrapolated frequencies with a linear ramp
     * between the correction dims of beta_fast and beta_slow. The attention
     * factor is 1 for V4 (cos/sin are not scaled). */
    double bf = yarn->beta_fast > 0 ? yarn->beta_fast : 32.0;
    double bs = yarn->beta_slow > 0 ? yarn->beta_slow : 1.0;
    double low = floor(correction_dim(bf, rd, theta, yarn->original_max_pos));
    double high = ceil(correction_dim(bs, rd, theta, yarn->original_max_pos));
    if (low < 0)
        low = 0;
    if (high > rd - 1)
        high = rd - 1;
    if (low == high)
        high += 0.001;
    for (int i = 0; i < half; i++) {
        float ramp = ((float)i - (float)low) / (float)(high - low);
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float extra_factor = 1.0f - ramp;
        float extra = inv_freq[i];
        float inter = 1.0f / ((float)yarn->factor * powf((float)theta, (float)(2 * i) / (float)rd));
        inv_freq[i] = inter * (1.0f - extra_factor) + extra * extra_factor;
    }
}

void qplug__fw_rope(float *v, int rd, const float *inv_freq, int64_t pos, bool inverse)
{
    for (int i = 0; i < rd / 2; i++) {
        float f = (float)pos * inv_freq[i];
        float c = cosf(f), s = sinf(f);
        if (inverse)
            s = -s;
        float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * c - x1 * s;
        v[2 * i + 1] = x1 * c + x0 * s;
    }
}

float qplug__fw_sqrt_softplus(float x)
{
    float sp = x > 20.0f ? x : log1pf(expf(x));
    return sqrtf(sp);
}

size_t qplug__fw_topk_scratch_bytes(int64_t n)
{
    return (size_t)n * (sizeof(float) + sizeof(int32_t));
}

/* Is (va, ia) ranked before (vb, ib)? Larger value first, lower index on
 * ties; NaN ranks last. */
static bool ranks_before(float va, int32_t ia, float vb, int32_t ib)
{
    if (va != va)
        return false;
    if (vb != vb)
        return true;
    return va > vb || (va == vb && ia < ib);
}

void qplug__fw_topk(const float *v, int64_t n, int64_t k, int32_t *idx, void *scratch)
{
    /* A bounded insertion list: O(n k), which is what the sizes here need
     * (top-k of at most a few thousand compressed blocks or experts). */
    float *bv = scratch;
    int32_t *bi = (int32_t *)(bv + n);
    int64_t cnt = 0;
    if (k > n)
        k = n;
    for (int64_t i = 0; i < n; i++) {
        float x = v[i];
        if (cnt == k && !ranks_before(x, (int32_t)i, bv[cnt - 1], bi[cnt - 1]))
            continue;
        int64_t j = cnt < k ? cnt++ : k - 1;
        while (j > 0 && ranks_before(x, (int32_t)i, bv[j - 1], bi[j - 1])) {
            bv[j] = bv[j - 1];
            bi[j] = bi[j - 1];
            j--;
        }
        bv[j] = x;
        bi[j] = (int32_t)i;
    }
    for (int64_t j = 0; j < k; j++)
        idx[j] = bi[j];
}

bool qplug__fw_route(const float *logits, int E, int top_k, const float *bias,
                     const int32_t *hash_ids, float scaling, int32_t *ids, float *w)
{
    float s[1024];
    float sel[1024];
    float tk_scratch[2048];
    int E_use = E > 1024 ? 1024 : E;
    for (int e = 0; e < E_use; e++) {
        s[e] = qplug__fw_sqrt_softplus(logits[e]);
        sel[e] = s[e] + (bias ? bias[e] : 0.0f);
    }
    if (hash_ids) {
        for (int j = 0; j < top_k; j++) {
            if (hash_ids[j] < 0 || hash_ids[j] >= E_use)
                return false;
            ids[j] = hash_ids[j];
        }
    } else {
        qplug__fw_topk(sel, E_use, top_k, ids, tk_scratch);
    }
    float sum = 0.0f;
    for (int j = 0; j < top_k; j++)
        sum += s[ids[j]];
    for (int j = 0; j < top_k; j++)
        w[j] = s[ids[j]] / (sum + 1e-20f) * scaling;
    return true;
}

void qplug__fw_pool(int64_t d, int rows, const float *prev_kv, const float *prev_g,
                    const float *cur_kv, const float *cur_g, int64_t stride, int64_t cur_off,
                    float *out)
{
    for (int64_t ch = 0; ch < d; ch++) {
        float mx = -INFINITY;
        for (int r = 0; r < rows; r++) {
            if (prev_g && prev_g[r * stride + ch] > mx)
                mx = prev_g[r * stride + ch];
            if (cur_g[r * stride + cur_off + ch] > mx)
                mx = cur_g[r * stride + cur_off + ch];
        }
        float den = 0.0f, num = 0.0f;
        float e[2 * 128 + 256];
        int ne = 0;
        /* Weights first, then the weighted sum with normalised weights, the
         * order torch's softmax-then-multiply uses. */
        if (prev_g)
            for (int r = 0; r < rows; r++) {
                e[ne] = expf(prev_g[r * stride + ch] - mx);
                den += e[ne++];
            }
        for (int r = 0; r < rows; r++) {
            e[ne] = expf(cur_g[r * stride + cur_off + ch] - mx);
            den += e[ne++];
        }
        ne = 0;
        if (prev_g)
            for (int r = 0; r < rows; r++)
                num += prev_kv[r * stride + ch] * (e[ne++] / den);
        for (int r = 0; r < rows; r++)
            num += cur_kv[r * stride + cur_off + ch] * (e[ne++] / den);
        out[ch] = num;
    }
}

void qplug__fw_attend(const float *q, int64_t hd, const float *win, int64_t nwin,
                      const float *ent, const int32_t *sel, int64_t nent, float sink, float scale,
                      float *scores, float *out)
{
    int64_t nk = nwin + nent;
    float mx = sink;
    for (int64_t i = 0; i < nk; i++) {
        const float *k = i < nwin ? win + i * hd
                                  : ent + (sel ? (int64_t)sel[i - nwin] : i - nwin) * hd;
        float acc = 0.0f;
        for (int64_t c = 0; c < hd; c++)
            acc += q[c] * k[c];
        scores[i] = acc * scale;
        if (scores[i] > mx)
            mx = scores[i];
    }
    float den = expf(sink - mx);
    for (int64_t i = 0; i < nk; i++) {
        scores[i] = expf(scores[i] - mx);
        den += scores[i];
    }
    for (int64_t c = 0; c < hd; c++)
        out[c] = 0.0f;
    for (int64_t i = 0; i < nk; i++) {
        const float *k = i < nwin ? win + i * hd
                                  : ent + (sel ? (int64_t)sel[i - nwin] : i - nwin) * hd;
        float p = scores[i] / den;
        for (int64_t c = 0; c < hd; c++)
            out[c] += p * k[c];
    }
}

int32_t qplug__fw_argmax(const float *v, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return (int32_t)best;
}
