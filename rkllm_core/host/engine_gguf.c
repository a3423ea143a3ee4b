/* The GGUF engine: a real LLM through llama.cpp (the libllama of the llama-cpp-python package).
 *
 * runtime.c keeps the librkllmrt semantics (templates, KV-cache bookkeeping, callbacks, UTF-8,
 * perf stats); this file maps the engine table onto llama.cpp: the model's own tokenizer, one
 * llama.cpp sequence per batch lane, sampling chains built from RKLLMParam, hidden states from the
 * embeddings output (pooling none: the final normed hidden state of every token), logits, LoRA
 * adapters and sequence state for prompt caches. Tested against llama-cpp-python 0.3.36. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host_internal.h"
#include "llama.h"

#define GGUF_MAX_LORA 32
#define GGUF_PENALTY_LAST_N 64

typedef struct {
    struct llama_sampler *chain;
    host_sampling params; /* what chain was built from */
    int valid;
    float *logits;        /* the last position's logits, copied after each decode */
    float *hidden;        /* n_hidden x n_embd, from the last prefill in hidden-state mode */
    int n_hidden;
    int pos;              /* positions this sequence holds in the KV cache */
} gguf_seq;

struct host_engine {
    struct llama_model *model;
    const struct llama_vocab *vocab;
    struct llama_context *ctx;
    int n_vocab, n_embd, n_ctx, n_seq, n_batch;
    int32_t *eog;         /* end-of-generation tokens (masked when EOS is ignored) */
    int n_eog;
    struct {
        char *name;
        struct llama_adapter_lora *adapter;
        float scale;
    } lora[GGUF_MAX_LORA];
    int n_lora;
    int active_lora;      /* index into lora, -1 none */
    gguf_seq seq[HOST_MAX_BATCH];
    llama_token_data *candidates;
};

/* ---------- llama.cpp logging: errors always, everything at RKLLM_LOG_LEVEL >= 2 ---------- */

static void log_bridge(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR || host_log_level >= 2) {
        size_t n = strlen(text);
        while (n && text[n - 1] == '\n') n--;
        if (n) host_log(level == GGML_LOG_LEVEL_ERROR ? 'E' : 'I', "llama.cpp: %.*s", (int)n, text);
    }
}

static pthread_once_t backend_once = PTHREAD_ONCE_INIT;
static void backend_init(void) {
    llama_log_set(log_bridge, NULL);
    llama_backend_init();
}

/* ---------- the runtime-side chat template, derived from the GGUF's ---------- */

static char *apply_template(const char *tmpl, const struct llama_chat_message *msgs, size_t n) {
    int32_t cap = 4096;
    char *buf = malloc((size_t)cap);
    int32_t got = llama_chat_apply_template(tmpl, msgs, n, true, buf, cap);
    if (got > cap) {
        cap = got + 1;
        buf = realloc(buf, (size_t)cap);
        got = llama_chat_apply_template(tmpl, msgs, n, true, buf, cap);
    }
    if (got < 0) {
        free(buf);
        return NULL;
    }
    buf[got] = 0;
    return buf;
}

/* A default system prompt written in the Jinja source after the system header, as ChatML
 * templates such as SmolLM2's and Qwen's do ('<|im_start|>system\nYou are ...<|im_end|>'). */
static char *default_system(const char *jinja, const char *head, const char *tail) {
    strbuf esc = {0};
    for (const char *p = head; *p; p++) {
        if (*p == '\n') sb_adds(&esc, "\\n");
        else sb_add(&esc, p, 1);
    }
    char *result = NULL;
    const char *heads[2] = {head, esc.s};
    for (int form = 0; form < 2 && !result; form++) {
        for (const char *at = jinja; (at = strstr(at, heads[form])); at++) {
            if (at == jinja || (at[-1] != '\'' && at[-1] != '"')) continue;
            const char *body = at + strlen(heads[form]);
            const char *end = strstr(body, tail);
            const char *quote = strchr(body, at[-1]);
            if (!end || (quote && quote < end) || end == body) continue;
            strbuf out = {0};
            for (const char *p = body; p < end; p++) {
                if (*p == '{' || *p == '}') { /* a template expression, not a constant */
                    sb_free(&out);
                    break;
                }
                if (form == 1 && p[0] == '\\' && p[1] == 'n') {
                    sb_adds(&out, "\n");
                    p++;
                } else {
                    sb_add(&out, p, 1);
                }
            }
            if (out.s) {
                result = out.s;
                break;
            }
        }
    }
    sb_free(&esc);
    return result;
}

static void set_owned(char **slot, char *value) {
    free(*slot);
    *slot = value;
}

static void derive_template(host_engine *e, host_model_config *cfg) {
    const char *jinja = llama_model_chat_template(e->model, NULL);
    if (!jinja) {
        cfg->has_template = 0;
        set_owned(&cfg->system_prompt, strdup(""));
        set_owned(&cfg->prompt_prefix, strdup(""));
        set_owned(&cfg->prompt_postfix, strdup(""));
        host_log('W', "the GGUF model has no chat template: prompts are sent raw");
        return;
    }
    /* Render marker messages and cut the result around them. */
    struct llama_chat_message user_only[1] = {{"user", "\x02"}};
    struct llama_chat_message with_sys[2] = {{"system", "\x01"}, {"user", "\x02"}};
    char *u = apply_template(jinja, user_only, 1);
    char *s = apply_template(jinja, with_sys, 2);
    char *um = u ? strchr(u, '\x02') : NULL;
    char *sm = s ? strchr(s, '\x01') : NULL;
    size_t ulen = u ? strlen(u) : 0, slen = s ? strlen(s) : 0;
    if (!um || !sm || slen < ulen || strcmp(s + slen - ulen, u) != 0) {
        host_log('W', "llama.cpp does not know this GGUF chat template: prompts are sent raw "
                      "(use rkllm_set_chat_template to set one)");
        cfg->has_template = 0;
        set_owned(&cfg->system_prompt, strdup(""));
        set_owned(&cfg->prompt_prefix, strdup(""));
        set_owned(&cfg->prompt_postfix, strdup(""));
        free(u);
        free(s);
        return;
    }
    cfg->has_template = 1;
    set_owned(&cfg->prompt_prefix, strndup(u, (size_t)(um - u)));
    set_owned(&cfg->prompt_postfix, strdup(um + 1));
    /* the system block: s without the user part, the marker replaced by "{}" */
    s[slen - ulen] = 0;
    strbuf fmt = {0};
    sb_add(&fmt, s, (size_t)(sm - s));
    sb_adds(&fmt, "{}");
    sb_adds(&fmt, sm + 1);
    set_owned(&cfg->system_format, fmt.s);
    char *head = strndup(s, (size_t)(sm - s));
    char *tail_full = sm + 1;
    size_t tl = strcspn(tail_full, "\n");
    char *tail = strndup(tail_full, tl ? tl : strlen(tail_full));
    char *dflt = default_system(jinja, head, tail);
    strbuf block = {0};
    sb_adds(&block, "");
    if (dflt) {
        sb_adds(&block, head);
        sb_adds(&block, dflt);
        sb_adds(&block, sm + 1);
    }
    set_owned(&cfg->system_prompt, block.s);
    cfg->supports_thinking = strstr(jinja, "enable_thinking") != NULL;
    free(dflt);
    free(head);
    free(tail);
    free(u);
    free(s);
}

/* ---------- load / configure / destroy ---------- */

static int gg_load(host_engine **out, const char *path, host_model_config *cfg, char *err,
                   size_t errlen) {
    pthread_once(&backend_once, backend_init);
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) {
        snprintf(err, errlen, "llama.cpp could not load the GGUF model %s (a truncated file, or "
                              "an architecture this llama.cpp does not know)", path);
        return -1;
    }
    host_engine *e = calloc(1, sizeof *e);
    e->model = model;
    e->vocab = llama_model_get_vocab(model);
    e->n_vocab = llama_vocab_n_tokens(e->vocab);
    e->n_embd = llama_model_n_embd(model);
    e->active_lora = -1;
    for (int32_t t = 0; t < e->n_vocab; t++)
        if (llama_vocab_is_eog(e->vocab, t)) {
            e->eog = realloc(e->eog, sizeof(int32_t) * (size_t)(e->n_eog + 1));
            e->eog[e->n_eog++] = t;
        }
    cfg->max_context_limit = llama_model_n_ctx_train(model);
    cfg->vocab_size = e->n_vocab;
    cfg->hidden_size = e->n_embd;
    char desc[128];
    llama_model_desc(model, desc, sizeof desc);
    set_owned(&cfg->dtype, strdup(desc));
    set_owned(&cfg->platform, strdup("HOST-CPU"));
    derive_template(e, cfg);
    *out = e;
    return 0;
}

static int gg_configure(host_engine *e, int n_ctx, int n_seq, char *err, size_t errlen) {
    struct llama_context_params cp = llama_context_default_params();
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    cp.n_seq_max = (uint32_t)n_seq;
    cp.n_threads = cp.n_threads_batch = (int32_t)(cpus > 0 ? cpus : 1);
    cp.pooling_type = LLAMA_POOLING_TYPE_NONE;
    cp.embeddings = false;
    cp.no_perf = true;
    cp.kv_unified = true; /* n_ctx is shared by the lanes, as max_context_len is per model */
    e->ctx = llama_init_from_model(e->model, cp);
    if (!e->ctx) {
        snprintf(err, errlen, "llama.cpp could not create a context of %d tokens", n_ctx);
        return -1;
    }
    e->n_ctx = n_ctx;
    e->n_seq = n_seq;
    e->n_batch = (int)cp.n_batch;
    e->candidates = malloc(sizeof(llama_token_data) * (size_t)e->n_vocab);
    for (int i = 0; i < HOST_MAX_BATCH; i++)
        e->seq[i].logits = calloc((size_t)e->n_vocab, sizeof(float));
    return 0;
}

static void gg_destroy(host_engine *e) {
    if (!e) return;
    for (int i = 0; i < HOST_MAX_BATCH; i++) {
        if (e->seq[i].chain) llama_sampler_free(e->seq[i].chain);
        free(e->seq[i].logits);
        free(e->seq[i].hidden);
    }
    if (e->ctx) llama_free(e->ctx);
    for (int i = 0; i < e->n_lora; i++) free(e->lora[i].name); /* adapters die with the model */
    llama_model_free(e->model);
    free(e->eog);
    free(e->candidates);
    free(e);
}

/* ---------- tokens ---------- */

static int gg_tokenize(host_engine *e, const char *text, size_t len, int parse_special, ivec *out) {
    if (len == 0) return 0;
    int32_t cap = (int32_t)len + 8;
    int32_t *buf = malloc(sizeof(int32_t) * (size_t)cap);
    int32_t n = llama_tokenize(e->vocab, text, (int32_t)len, buf, cap, false, parse_special != 0);
    if (n < 0) {
        cap = -n;
        buf = realloc(buf, sizeof(int32_t) * (size_t)cap);
        n = llama_tokenize(e->vocab, text, (int32_t)len, buf, cap, false, parse_special != 0);
    }
    if (n < 0) {
        free(buf);
        return -1;
    }
    ivec_append(out, buf, n);
    free(buf);
    return 0;
}

static int gg_token_bytes(host_engine *e, int32_t tok, int skip_special, char *buf, int cap) {
    if (tok < 0 || tok >= e->n_vocab) return 0;
    int n = llama_token_to_piece(e->vocab, tok, buf, cap, 0, skip_special == 0);
    return n < 0 ? 0 : n;
}

/* ---------- decoding ---------- */

static void apply_lora(host_engine *e, const char *name) {
    int want = -1;
    for (int i = 0; name && i < e->n_lora; i++)
        if (strcmp(e->lora[i].name, name) == 0) want = i;
    if (want == e->active_lora) return;
    if (want < 0) llama_set_adapters_lora(e->ctx, NULL, 0, NULL);
    else llama_set_adapters_lora(e->ctx, &e->lora[want].adapter, 1, &e->lora[want].scale);
    e->active_lora = want;
}

/* Decode tokens[from..to) of seq at positions from.., outputs per `all_outputs` (else last). */
static int decode_range(host_engine *e, int seq, const int32_t *tokens, int from, int to,
                        const float *embed, int embed_base, int all_outputs, float *hidden,
                        char *err, size_t errlen) {
    gguf_seq *s = &e->seq[seq];
    for (int start = from; start < to;) {
        /* one batch: at most n_batch tokens of one kind (ids, or embedding rows) */
        int is_embed = tokens[start] < 0;
        int end = start;
        while (end < to && end - start < e->n_batch && (tokens[end] < 0) == is_embed) end++;
        int m = end - start;
        struct llama_batch b = llama_batch_init(m, is_embed ? e->n_embd : 0, 1);
        for (int i = 0; i < m; i++) {
            int k = start + i;
            if (is_embed) {
                int row = embed_base + k;
                memcpy(b.embd + (size_t)i * (size_t)e->n_embd, embed + (size_t)row * (size_t)e->n_embd,
                       sizeof(float) * (size_t)e->n_embd);
            } else {
                b.token[i] = tokens[k];
            }
            b.pos[i] = k;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = seq;
            b.logits[i] = all_outputs || k == to - 1;
        }
        b.n_tokens = m;
        int rc = llama_decode(e->ctx, b);
        if (rc != 0) {
            llama_batch_free(b);
            llama_memory_seq_rm(llama_get_memory(e->ctx), seq, start, -1);
            s->pos = start;
            snprintf(err, errlen, "llama_decode failed (%d) at position %d of %d", rc, start, e->n_ctx);
            return -1;
        }
        if (hidden)
            for (int i = 0; i < m; i++) {
                const float *h = llama_get_embeddings_ith(e->ctx, i);
                if (h) memcpy(hidden + (size_t)(start - from + i) * (size_t)e->n_embd, h,
                              sizeof(float) * (size_t)e->n_embd);
            }
        else if (end == to) {
            const float *lg = llama_get_logits_ith(e->ctx, m - 1);
            if (lg) memcpy(s->logits, lg, sizeof(float) * (size_t)e->n_vocab);
        }
        llama_batch_free(b);
        s->pos = end;
        start = end;
    }
    return 0;
}

static int gg_prefill(host_engine *e, int seq, const int32_t *tokens, int n, int n_cached,
                      const host_run_info *info, char *err, size_t errlen) {
    gguf_seq *s = &e->seq[seq];
    if (info->lora_name) {
        int known = 0;
        for (int i = 0; i < e->n_lora; i++) known |= strcmp(e->lora[i].name, info->lora_name) == 0;
        if (!known) {
            snprintf(err, errlen, "LoRA adapter \"%s\" is not loaded (rkllm_load_lora first)",
                     info->lora_name);
            return -1;
        }
    }
    apply_lora(e, info->lora_name);
    if (s->pos != n_cached) { /* the runtime's bookkeeping is the truth */
        llama_memory_seq_rm(llama_get_memory(e->ctx), seq, n_cached, -1);
        s->pos = n_cached < s->pos ? n_cached : s->pos;
    }
    if (n_cached >= n && n > 0) { /* nothing new: recompute the last position for its logits */
        n_cached = n - 1;
        llama_memory_seq_rm(llama_get_memory(e->ctx), seq, n_cached, -1);
        s->pos = n_cached;
    }
    /* embedding rows are the input's, aligned to the end of the new tokens */
    int n_neg = 0;
    for (int i = n_cached; i < n; i++) n_neg += tokens[i] < 0;
    if (n_neg && (!info->embed || info->n_embed < n_neg)) {
        snprintf(err, errlen, "embedding input has %d rows for %d embedding positions",
                 info->n_embed, n_neg);
        return -1;
    }
    /* row index of token k = (negatives before k in [n_cached, k)) + offset; tokens of one kind
     * are contiguous in every input the runtime builds, so base + k works per batch */
    int first_neg = n_cached;
    while (first_neg < n && tokens[first_neg] >= 0) first_neg++;
    int embed_base = (info->n_embed - n_neg) - first_neg;
    int hidden_mode = info->mode == 1;
    if (hidden_mode) {
        free(s->hidden);
        s->n_hidden = n - n_cached;
        s->hidden = calloc((size_t)(s->n_hidden > 0 ? s->n_hidden : 1) * (size_t)e->n_embd,
                           sizeof(float));
        llama_set_embeddings(e->ctx, true);
    }
    int rc = decode_range(e, seq, tokens, n_cached, n, info->embed, embed_base, hidden_mode,
                          hidden_mode ? s->hidden : NULL, err, errlen);
    if (hidden_mode) llama_set_embeddings(e->ctx, false);
    if (s->chain) llama_sampler_reset(s->chain);
    return rc;
}

static struct llama_sampler *build_chain(host_engine *e, const host_sampling *p) {
    struct llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    struct llama_sampler *c = llama_sampler_chain_init(cp);
    const char *seed_env = getenv("RKLLM_HOST_SEED");
    uint32_t seed = seed_env ? (uint32_t)strtoul(seed_env, NULL, 10) : LLAMA_DEFAULT_SEED;
    if (p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f)
        llama_sampler_chain_add(
            c, llama_sampler_init_penalties(e->n_vocab, GGUF_PENALTY_LAST_N,
                                            p->repeat_penalty > 0 ? p->repeat_penalty : 1.0f,
                                            p->frequency_penalty, p->presence_penalty));
    if (p->mirostat == 1 || p->mirostat == 2) {
        llama_sampler_chain_add(c, llama_sampler_init_temp(p->temperature));
        llama_sampler_chain_add(
            c, p->mirostat == 1
                   ? llama_sampler_init_mirostat(e->n_vocab, seed, p->mirostat_tau, p->mirostat_eta, 100)
                   : llama_sampler_init_mirostat_v2(seed, p->mirostat_tau, p->mirostat_eta));
    } else if (p->top_k == 1 || p->temperature <= 0.0f) {
        llama_sampler_chain_add(c, llama_sampler_init_greedy());
    } else {
        if (p->top_k > 0) llama_sampler_chain_add(c, llama_sampler_init_top_k(p->top_k));
        if (p->top_p > 0 && p->top_p < 1) llama_sampler_chain_add(c, llama_sampler_init_top_p(p->top_p, 1));
        llama_sampler_chain_add(c, llama_sampler_init_temp(p->temperature));
        llama_sampler_chain_add(c, llama_sampler_init_dist(seed));
    }
    return c;
}

static int gg_next(host_engine *e, int seq, const host_sampling *smp, int ignore_eos, int32_t *tok) {
    gguf_seq *s = &e->seq[seq];
    if (!s->valid || memcmp(&s->params, smp, sizeof *smp) != 0) {
        if (s->chain) llama_sampler_free(s->chain);
        s->chain = build_chain(e, smp);
        s->params = *smp;
        s->valid = 1;
    }
    for (int32_t t = 0; t < e->n_vocab; t++) {
        e->candidates[t].id = t;
        e->candidates[t].logit = s->logits[t];
        e->candidates[t].p = 0.0f;
    }
    if (ignore_eos)
        for (int i = 0; i < e->n_eog; i++) e->candidates[e->eog[i]].logit = -INFINITY;
    llama_token_data_array arr = {e->candidates, (size_t)e->n_vocab, -1, false};
    llama_sampler_apply(s->chain, &arr);
    if (arr.selected < 0 || (size_t)arr.selected >= arr.size) return -1;
    int32_t t = arr.data[arr.selected].id;
    llama_sampler_accept(s->chain, t);
    if (!ignore_eos && llama_vocab_is_eog(e->vocab, t)) return 1;
    *tok = t;
    return 0;
}

static int gg_accept(host_engine *e, int seq, int32_t tok) {
    gguf_seq *s = &e->seq[seq];
    int pos = s->pos;
    struct llama_batch b = llama_batch_init(1, 0, 1);
    b.token[0] = tok;
    b.pos[0] = pos;
    b.n_seq_id[0] = 1;
    b.seq_id[0][0] = seq;
    b.logits[0] = 1;
    b.n_tokens = 1;
    int rc = llama_decode(e->ctx, b);
    llama_batch_free(b);
    if (rc != 0) {
        host_log('E', "llama_decode failed (%d) at position %d", rc, pos);
        return -1;
    }
    const float *lg = llama_get_logits_ith(e->ctx, 0);
    if (lg) memcpy(s->logits, lg, sizeof(float) * (size_t)e->n_vocab);
    s->pos = pos + 1;
    return 0;
}

static int gg_kv_remove(host_engine *e, int seq, int start, int end) {
    gguf_seq *s = &e->seq[seq];
    if (start < 0) start = 0;
    if (end > s->pos) end = s->pos;
    if (start >= end) return 0;
    llama_memory_t mem = llama_get_memory(e->ctx);
    if (!llama_memory_seq_rm(mem, seq, start, end)) return -1;
    if (end < s->pos) llama_memory_seq_add(mem, seq, end, -1, -(end - start));
    s->pos -= end - start;
    return 0;
}

static int gg_hidden(host_engine *e, int seq, const float **out, int *n, int *dim) {
    gguf_seq *s = &e->seq[seq];
    if (!s->hidden) return -1;
    *out = s->hidden;
    *n = s->n_hidden;
    *dim = e->n_embd;
    return 0;
}

static int gg_logits(host_engine *e, int seq, const float **out, int *vocab) {
    *out = e->seq[seq].logits;
    *vocab = e->n_vocab;
    return 0;
}

static int gg_load_lora(host_engine *e, const char *path, const char *name, float scale, char *err,
                        size_t errlen) {
    for (int i = 0; i < e->n_lora; i++)
        if (strcmp(e->lora[i].name, name) == 0) {
            snprintf(err, errlen, "a LoRA adapter named \"%s\" is already loaded", name);
            return -1;
        }
    if (e->n_lora >= GGUF_MAX_LORA) {
        snprintf(err, errlen, "at most %d LoRA adapters", GGUF_MAX_LORA);
        return -1;
    }
    struct llama_adapter_lora *ad = llama_adapter_lora_init(e->model, path);
    if (!ad) {
        snprintf(err, errlen, "llama.cpp could not load the LoRA adapter %s (not a GGUF LoRA for "
                              "this model?)", path);
        return -1;
    }
    e->lora[e->n_lora].name = strdup(name);
    e->lora[e->n_lora].adapter = ad;
    e->lora[e->n_lora].scale = scale;
    e->n_lora++;
    return 0;
}

static int gg_state_save(host_engine *e, int seq, void **data, size_t *size) {
    size_t n = llama_state_seq_get_size(e->ctx, seq);
    uint8_t *buf = malloc(n ? n : 1);
    size_t got = llama_state_seq_get_data(e->ctx, buf, n, seq);
    if (got == 0) {
        free(buf);
        return -1;
    }
    *data = buf;
    *size = got;
    return 0;
}

static int gg_state_load(host_engine *e, int seq, const void *data, size_t size, int n_tokens) {
    llama_memory_seq_rm(llama_get_memory(e->ctx), seq, -1, -1);
    if (llama_state_seq_set_data(e->ctx, data, size, seq) == 0) {
        e->seq[seq].pos = 0;
        return -1;
    }
    e->seq[seq].pos = n_tokens;
    return 0;
}

const host_engine_ops gguf_engine_ops = {
    .name = "gguf",
    .load = gg_load,
    .configure = gg_configure,
    .destroy = gg_destroy,
    .tokenize = gg_tokenize,
    .token_bytes = gg_token_bytes,
    .prefill = gg_prefill,
    .next_token = gg_next,
    .accept = gg_accept,
    .kv_remove = gg_kv_remove,
    .hidden = gg_hidden,
    .logits = gg_logits,
    .load_lora = gg_load_lora,
    .state_save = gg_state_save,
    .state_load = gg_state_load,
};
