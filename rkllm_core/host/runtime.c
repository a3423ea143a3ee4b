/* The host runtime: librkllmrt's exported API and semantics, for machines without an NPU.
 *
 * One source for every layout family (RKLLM_HOST_FAMILY). What the real runtime does, and
 * where this one differs, is written in docs/host-runtime.md; the sources behind each rule are
 * in ../shared/rkllm-abi/SEMANTICS.md. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "host_internal.h"

#if RKLLM_HOST_FAMILY == 110
#define HOST_RUNTIME_VERSION "1.1.4"
#elif RKLLM_HOST_FAMILY == 120
#define HOST_RUNTIME_VERSION "1.2.0"
#elif RKLLM_HOST_FAMILY == 121
#define HOST_RUNTIME_VERSION "1.2.1"
#elif RKLLM_HOST_FAMILY == 123
#define HOST_RUNTIME_VERSION "1.2.3"
#else
#define HOST_RUNTIME_VERSION "1.3.0"
#endif

/* The binary carries this string, as Rockchip's does, so a release can be read from the file. */
HOST_API const char rkllm_host_version_string[] = "rkllm-runtime version: " HOST_RUNTIME_VERSION;

int host_log_level = 0;

/* ---------- small containers ---------- */

void ivec_push(ivec *a, int32_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = realloc(a->v, sizeof(int32_t) * (size_t)a->cap);
    }
    a->v[a->n++] = x;
}

void ivec_append(ivec *a, const int32_t *xs, int n) {
    for (int i = 0; i < n; i++) ivec_push(a, xs[i]);
}

void ivec_free(ivec *a) {
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

void ivec_erase(ivec *a, int start, int end) {
    if (start < 0) start = 0;
    if (end > a->n) end = a->n;
    if (start >= end) return;
    memmove(a->v + start, a->v + end, sizeof(int32_t) * (size_t)(a->n - end));
    a->n -= end - start;
}

void sb_add(strbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

void sb_adds(strbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

void sb_free(strbuf *b) {
    free(b->s);
    b->s = NULL;
    b->n = b->cap = 0;
}

char *host_strdup(const char *s) { return s ? strdup(s) : NULL; }

uint64_t host_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

void host_log(char level, const char *fmt, ...) {
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%c rkllm: %s\n", level, line);
    fflush(stderr);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static float peak_memory_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1) break;
    fclose(f);
    return (float)kb / 1024.0f;
}

/* ---------- the model handle ---------- */

typedef struct {
    ivec kv;         /* token ids in this sequence's KV cache (negative: embedding input) */
    int system_len;  /* leading tokens that are the system prompt */
    char pending[256]; /* bytes not yet handed over: an incomplete UTF-8 character */
    int npending;
    int done, generated, prefill_tokens;
    double prefill_ms, generate_ms;
    char text[512];
} host_seq;

typedef struct {
    /* deep copies of one run's inputs, so an async run owns what it reads */
    RKLLMInput inputs[HOST_MAX_BATCH];
    char *strings[HOST_MAX_BATCH][8];
    void *arrays[HOST_MAX_BATCH][2];
    int mode, keep_history, max_new_tokens;
    char *lora_name;
    int save_cache;
    char *cache_path;
    int has_sampling;
    host_sampling sampling;
    void *userdata;
} host_job;

typedef struct {
    const host_engine_ops *ops;
    host_engine *eng;
    host_model_config cfg;
    RKLLMParam param;
    char *model_path;
    int n_batch;
    LLMResultCallback cb;
    void *cb_userdata;
#if RKLLM_HOST_FAMILY >= 130
    LLMTokenizerCallback tokenizer_cb;
    void *tokenizer_userdata;
    LLMGetEmbedCallback embed_cb;
    void *embed_userdata;
#endif
    host_seq seqs[HOST_MAX_BATCH];
    int custom_template;
    char *c_system, *c_prefix, *c_postfix;
    int tools_set;
    int tools_offered; /* tools_json holds at least one tool */
    char *tools_system, *tools_json, *tool_response_str;
    char *loras[32];
    int n_loras;
    ivec cache_tokens;
    void *cache_state;
    size_t cache_state_size;
    int cache_loaded;
    int cross_attn_tokens;
    atomic_int running;
    atomic_int abort_flag;
    pthread_mutex_t lock;
} host_ctx;

static void seq_truncate(host_ctx *c, int lane, int n) {
    host_seq *s = &c->seqs[lane];
    if (n >= s->kv.n) return;
    if (n < 0) n = 0;
    c->ops->kv_remove(c->eng, lane, n, s->kv.n);
    s->kv.n = n;
    if (s->system_len > n) s->system_len = n;
}

__attribute__((unused)) static void clear_all(host_ctx *c, int keep_system) {
    for (int i = 0; i < c->n_batch; i++) seq_truncate(c, i, keep_system ? c->seqs[i].system_len : 0);
}

/* ---------- defaults and init ---------- */

HOST_API RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.model_path = NULL;
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 40;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.mirostat = 0;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.skip_special_token = true;
    p.is_async = false;
#if RKLLM_HOST_FAMILY >= 120
    p.n_keep = -1;
    p.extend_param.enabled_cpus_num = 4;
#endif
#if RKLLM_HOST_FAMILY >= 121
    p.extend_param.n_batch = 1;
#endif
#if RKLLM_HOST_FAMILY < 130
    p.img_start = "";
    p.img_end = "";
    p.img_content = "";
#endif
    return p;
}

static void config_defaults(host_model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->max_context_limit = 4096;
    cfg->vocab_size = 32000;
    cfg->hidden_size = 64;
    cfg->has_template = 1;
    cfg->system_prompt = strdup("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n");
    cfg->system_format = strdup("<|im_start|>system\n{}<|im_end|>\n");
    cfg->prompt_prefix = strdup("<|im_start|>user\n");
    cfg->prompt_postfix = strdup("<|im_end|>\n<|im_start|>assistant\n");
    cfg->think_off = strdup("<think>\n\n</think>\n\n");
    cfg->error_after_tokens = -1;
    cfg->slow_token_index = -1;
    cfg->hang_after_tokens = -1;
    cfg->crash_after_tokens = -1;
    cfg->platform = strdup("RK3588");
    cfg->toolkit_version = strdup(HOST_RUNTIME_VERSION);
    cfg->dtype = strdup("W8A8");
}

static void config_free(host_model_config *cfg) {
    free(cfg->system_prompt);
    free(cfg->system_format);
    free(cfg->prompt_prefix);
    free(cfg->prompt_postfix);
    free(cfg->think_off);
    free(cfg->fail_init);
    free(cfg->platform);
    free(cfg->toolkit_version);
    free(cfg->dtype);
    free(cfg->crash_on);
}

static const host_engine_ops *engine_for(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "failed to open model file %s: %s", path, strerror(errno));
        return NULL;
    }
    char magic[16] = {0};
    size_t got = fread(magic, 1, sizeof magic - 1, f);
    fclose(f);
    if (got >= 14 && memcmp(magic, "RKLLM-SCRIPTED", 14) == 0) return &scripted_engine_ops;
    if (got >= 4 && memcmp(magic, "GGUF", 4) == 0) {
#ifdef RKLLM_HOST_WITH_GGUF
        return &gguf_engine_ops;
#else
        snprintf(err, errlen,
                 "%s is a GGUF model, but this host runtime was built without llama.cpp: "
                 "install the host extra (pip install 'rkllm-py[host]') and run "
                 "`rkllm host build --force`",
                 path);
        return NULL;
#endif
    }
    if (got >= 5 && memcmp(magic, "RKLLM", 5) == 0) {
        snprintf(err, errlen,
                 "%s looks like an NPU model (.rkllm); the host runtime cannot run NPU models: "
                 "use librkllmrt.so on a Rockchip board, or a .gguf / scripted model here",
                 path);
        return NULL;
    }
    snprintf(err, errlen, "invalid rkllm model magic in %s", path);
    return NULL;
}

static void log_cpus(const RKLLMParam *p) {
#if RKLLM_HOST_FAMILY >= 120
    uint32_t mask = p->extend_param.enabled_cpus_mask;
    if (mask) {
        char buf[64] = "";
        size_t off = 0;
        for (int i = 0; i < 32 && off < sizeof buf - 4; i++)
            if (mask & (1u << i)) off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%d", off ? ", " : "", i);
        host_log('I', "Enabled cpus: [%s]", buf);
    }
    host_log('I', "Enabled cpus num: %d", p->extend_param.enabled_cpus_num);
    if (mask || p->extend_param.base_domain_id || p->extend_param.embed_flash)
        host_log('W', "host runtime: enabled_cpus_mask, base_domain_id (%d) and embed_flash (%d) "
                      "are recorded, not applied: this machine has no NPU",
                 p->extend_param.base_domain_id, p->extend_param.embed_flash);
#else
    (void)p;
#endif
}

HOST_API int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLM_INIT_CALLBACK_T callback) {
    const char *lvl = getenv("RKLLM_LOG_LEVEL");
    host_log_level = lvl ? atoi(lvl) : 0;
    if (!handle || !param) {
        host_log('E', "rkllm_init: handle and param must not be NULL");
        return -1;
    }
    *handle = NULL;
    host_log('I', "rkllm-runtime version: %s, rknpu driver version: none (host runtime), "
                  "platform: HOST",
             HOST_RUNTIME_VERSION);
    if (!param->model_path) {
        host_log('E', "model_path is NULL");
        return -1;
    }
    host_log('I', "loading rkllm model from %s", param->model_path);
    char err[1024] = "";
    const host_engine_ops *ops = engine_for(param->model_path, err, sizeof err);
    if (!ops) {
        host_log('E', "%s", err);
        return -1;
    }
    host_ctx *c = calloc(1, sizeof *c);
    config_defaults(&c->cfg);
    if (ops->load(&c->eng, param->model_path, &c->cfg, err, sizeof err) != 0) {
        host_log('E', "failed to load model: %s", err);
        config_free(&c->cfg);
        free(c);
        return -1;
    }
    c->ops = ops;
    host_log('I', "rkllm-toolkit version: %s, max_context_limit: %d, npu_core_num: 0, "
                  "target_platform: %s, model_dtype: %s, host engine: %s",
             c->cfg.toolkit_version, c->cfg.max_context_limit, c->cfg.platform, c->cfg.dtype,
             ops->name);
    int fail = 0;
    if (c->cfg.fail_init) {
        host_log('E', "%s", c->cfg.fail_init);
        fail = 1;
    } else if (param->max_context_len <= 0) {
        host_log('E', "max_context_len must be > 0, got %d", param->max_context_len);
        fail = 1;
    } else if (param->max_context_len > c->cfg.max_context_limit) {
        host_log('E', "max_context_len (%d) is larger than the model's max_context_limit (%d)",
                 param->max_context_len, c->cfg.max_context_limit);
        fail = 1;
    }
    c->n_batch = 1;
#if RKLLM_HOST_FAMILY >= 121
    if (param->extend_param.n_batch > 1) c->n_batch = param->extend_param.n_batch;
    if (param->extend_param.n_batch > HOST_MAX_BATCH) {
        host_log('E', "n_batch %d is larger than %d", param->extend_param.n_batch, HOST_MAX_BATCH);
        fail = 1;
    }
#endif
#if RKLLM_HOST_FAMILY >= 130
    if (callback) {
        c->cb = callback->result_callback;
        c->cb_userdata = callback->result_userdata;
        c->tokenizer_cb = callback->tokenizer_callback;
        c->tokenizer_userdata = callback->tokenizer_userdata;
        c->embed_cb = callback->embed_callback;
        c->embed_userdata = callback->embed_userdata;
    }
    if (c->cfg.needs_tokenizer_callback && !c->tokenizer_cb) {
        host_log('E', "this model was exported without a tokenizer: set "
                      "RKLLMCallback.tokenizer_callback");
        fail = 1;
    }
#else
    c->cb = callback;
#endif
    if (!fail && c->ops->configure &&
        c->ops->configure(c->eng, param->max_context_len, c->n_batch, err, sizeof err) != 0) {
        host_log('E', "%s", err);
        fail = 1;
    }
    if (fail) {
        c->ops->destroy(c->eng);
        config_free(&c->cfg);
        free(c);
        return -1;
    }
    log_cpus(param);
    c->param = *param;
    c->model_path = strdup(param->model_path);
    c->param.model_path = c->model_path;
#if RKLLM_HOST_FAMILY < 130
    c->param.img_start = c->param.img_end = c->param.img_content = NULL; /* read per run */
#endif
    pthread_mutex_init(&c->lock, NULL);
    if (host_log_level >= 1)
        host_log('I', "max_context_len: %d, max_new_tokens: %d, n_batch: %d, is_async: %d",
                 param->max_context_len, param->max_new_tokens, c->n_batch, param->is_async);
    *handle = c;
    return 0;
}

/* ---------- one run ---------- */

static int tokenize_text(host_ctx *c, const char *text, int special, ivec *out) {
#if RKLLM_HOST_FAMILY >= 130
    if (c->cfg.needs_tokenizer_callback && c->tokenizer_cb && !special) {
        int32_t len = (int32_t)strlen(text);
        int32_t cap = len + 16;
        int32_t *buf = malloc(sizeof(int32_t) * (size_t)cap);
        int n = c->tokenizer_cb(c->tokenizer_userdata, text, len, buf, cap);
        if (n < 0) {
            free(buf);
            host_log('E', "the tokenizer callback failed (%d)", n);
            return -1;
        }
        ivec_append(out, buf, n > cap ? cap : n);
        free(buf);
        return 0;
    }
#endif
    return c->ops->tokenize(c->eng, text, strlen(text), special, out);
}

static int count_tag(const char *s, const char *tag) {
    int n = 0;
    size_t tl = strlen(tag);
    for (const char *p = s; (p = strstr(p, tag)); p += tl) n++;
    return n;
}

static char *detokenize(host_ctx *c, const int32_t *ids, int n) {
    strbuf b = {0};
    sb_adds(&b, "");
    char piece[256];
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0) continue;
        int k = c->ops->token_bytes(c->eng, ids[i], 0, piece, sizeof piece);
        if (k > 0) sb_add(&b, piece, (size_t)k);
    }
    return b.s;
}

/* The system block the next conversation starts with ("" if none). */
static char *system_block(host_ctx *c) {
    if (c->custom_template && !c->tools_set) return strdup(c->c_system);
    if (c->tools_set) {
        strbuf inner = {0};
        sb_adds(&inner, c->tools_system ? c->tools_system : "");
        /* an empty array renders no tools section, as `{% if tools %}` does in HF templates */
        if (!c->custom_template && c->tools_offered) {
            sb_adds(&inner, "\n\n# Tools\n\nYou may call one or more functions to assist with the "
                            "user query.\n\nYou are provided with function signatures within "
                            "<tools></tools> XML tags:\n<tools>\n");
            sb_adds(&inner, c->tools_json);
            sb_adds(&inner, "\n</tools>\n\nFor each function call, return a json object with "
                            "function name and arguments within <tool_call></tool_call> XML "
                            "tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
                            "<args-json-object>}\n</tool_call>");
        }
        strbuf out = {0};
        const char *fmt = c->cfg.system_format;
        const char *hole = strstr(fmt, "{}");
        if (hole) {
            sb_add(&out, fmt, (size_t)(hole - fmt));
            sb_adds(&out, inner.s ? inner.s : "");
            sb_adds(&out, hole + 2);
        } else {
            sb_adds(&out, inner.s ? inner.s : "");
        }
        sb_free(&inner);
        return out.s ? out.s : strdup("");
    }
    return strdup(c->cfg.has_template ? c->cfg.system_prompt : "");
}

typedef struct {
    ivec tokens;       /* this run's new tokens */
    char *input_text;  /* text the rules of a scripted model see */
    const char *role;
    int enable_thinking;
    const float *embed;
    int n_embed;
    int new_system;    /* tokens[0..new_system) are a new system prompt */
} lane_input;

static int build_input(host_ctx *c, int lane, const RKLLMInput *in, lane_input *li, char *err,
                       size_t errlen) {
    memset(li, 0, sizeof *li);
    li->role = "user";
#if RKLLM_HOST_FAMILY >= 121
    if (in->role && *in->role) li->role = in->role;
    li->enable_thinking = in->enable_thinking;
    if (strcmp(li->role, "user") != 0 && strcmp(li->role, "tool") != 0) {
        snprintf(err, errlen, "unsupported role \"%s\": use \"user\" or \"tool\"", li->role);
        return -1;
    }
#else
    li->enable_thinking = c->cfg.supports_thinking; /* the template's own default */
#endif
    host_seq *s = &c->seqs[lane];
    /* 1.1 has no runtime template: callers concatenated prefix + text + postfix themselves */
    int templated = RKLLM_HOST_FAMILY >= 120 && (c->custom_template || c->cfg.has_template);
    const char *text = NULL;
    strbuf mm = {0};
    switch (in->input_type) {
    case RKLLM_INPUT_PROMPT:
        if (!in->prompt_input) {
            snprintf(err, errlen, "prompt_input is NULL");
            return -1;
        }
        text = in->prompt_input;
        break;
    case RKLLM_INPUT_MULTIMODAL: {
        const RKLLMMultiModalInput *m = &in->multimodal_input;
        if (!m->prompt) {
            snprintf(err, errlen, "multimodal_input.prompt is NULL");
            return -1;
        }
        text = m->prompt;
#if RKLLM_HOST_FAMILY >= 130
        size_t n_image = m->image.n_image, n_img_tok = m->image.n_image_tokens;
        const float *img = m->image.image_embed;
        size_t n_video = m->video.n_video;
        if (count_tag(text, "<video>") != (int)n_video) {
            snprintf(err, errlen, "the prompt has %d <video> tags but n_video is %zu",
                     count_tag(text, "<video>"), n_video);
            return -1;
        }
        if (n_video && (!m->video.video_embed || !m->video.n_frame_tokens ||
                        !m->video.n_frame_per_video)) {
            snprintf(err, errlen, "video_embed, n_frame_tokens and n_frame_per_video must be set");
            return -1;
        }
#elif RKLLM_HOST_FAMILY >= 121
        size_t n_image = m->n_image, n_img_tok = m->n_image_tokens;
        const float *img = m->image_embed;
#else
        size_t n_image = 1, n_img_tok = m->n_image_tokens;
        const float *img = m->image_embed;
#endif
        if (count_tag(text, "<image>") != (int)n_image) {
            snprintf(err, errlen, "The n_image/n_image_token of multimodal_input is not set or "
                                  "does not match: the prompt has %d <image> tags, n_image is %zu",
                     count_tag(text, "<image>"), n_image);
            return -1;
        }
        if (n_image && (!n_img_tok || !img)) {
            snprintf(err, errlen, "The n_image/n_image_token of multimodal_input is not set");
            return -1;
        }
        (void)mm;
        break;
    }
    case RKLLM_INPUT_TOKEN:
        if (!in->token_input.input_ids || in->token_input.n_tokens == 0) {
            snprintf(err, errlen, "token_input is empty");
            return -1;
        }
        for (size_t i = 0; i < in->token_input.n_tokens; i++) {
            int32_t t = in->token_input.input_ids[i];
            if (t < 0 || t >= c->cfg.vocab_size) {
                snprintf(err, errlen, "token id %d at %zu is outside the vocabulary (0..%d)", t, i,
                         c->cfg.vocab_size - 1);
                ivec_free(&li->tokens);
                return -1;
            }
            ivec_push(&li->tokens, t);
        }
        li->input_text = detokenize(c, in->token_input.input_ids, (int)in->token_input.n_tokens);
        return 0;
    case RKLLM_INPUT_EMBED:
        if (!in->embed_input.embed || in->embed_input.n_tokens == 0) {
            snprintf(err, errlen, "embed_input is empty");
            return -1;
        }
        li->embed = in->embed_input.embed;
        li->n_embed = (int)in->embed_input.n_tokens;
        for (int i = 0; i < li->n_embed; i++) ivec_push(&li->tokens, -1);
        li->input_text = strdup("");
        return 0;
    default:
        snprintf(err, errlen, "invalid input_type %d", (int)in->input_type);
        return -1;
    }
    li->input_text = strdup(text);
    if (templated && s->kv.n == 0) {
        char *sys = system_block(c);
        if (tokenize_text(c, sys, 1, &li->tokens) != 0) {
            free(sys);
            return -1;
        }
        li->new_system = li->tokens.n;
        free(sys);
    }
    const char *prefix = templated ? (c->custom_template ? c->c_prefix : c->cfg.prompt_prefix) : "";
    const char *postfix = templated ? (c->custom_template ? c->c_postfix : c->cfg.prompt_postfix) : "";
    if (tokenize_text(c, prefix, 1, &li->tokens) != 0) return -1;
    if (strcmp(li->role, "tool") == 0 && templated) {
        const char *tag = c->tool_response_str && *c->tool_response_str ? c->tool_response_str
                                                                         : "tool_response";
        strbuf b = {0};
        sb_adds(&b, "<");
        sb_adds(&b, tag);
        sb_adds(&b, ">\n");
        tokenize_text(c, b.s, 1, &li->tokens);
        b.n = 0;
        tokenize_text(c, text, 0, &li->tokens);
        sb_adds(&b, "\n</");
        sb_adds(&b, tag);
        sb_adds(&b, ">");
        tokenize_text(c, b.s, 1, &li->tokens);
        sb_free(&b);
    } else if (in->input_type == RKLLM_INPUT_MULTIMODAL) {
        /* each <image> becomes start + n_image_tokens placeholders + end */
        const char *p = text;
        const char *tag;
#if RKLLM_HOST_FAMILY >= 130
        const RKLLMMultiModalInput *m = &in->multimodal_input;
        size_t n_img_tok = m->image.n_image_tokens;
        size_t n_vid_tok = m->video.n_frame_tokens * m->video.n_frame_per_video;
#else
        size_t n_img_tok = in->multimodal_input.n_image_tokens;
        size_t n_vid_tok = 0;
#endif
        while ((tag = strstr(p, "<image>")) || (tag = strstr(p, "<video>"))) {
            const char *img = strstr(p, "<image>"), *vid = strstr(p, "<video>");
            int is_video = 0;
            if (img && (!vid || img < vid)) tag = img;
            else { tag = vid; is_video = 1; }
            char *chunk = strndup(p, (size_t)(tag - p));
            tokenize_text(c, chunk, 0, &li->tokens);
            free(chunk);
            size_t n = is_video ? n_vid_tok : n_img_tok;
            for (size_t i = 0; i < n; i++) ivec_push(&li->tokens, 0);
            p = tag + 7;
        }
        tokenize_text(c, p, 0, &li->tokens);
    } else {
        /* Without a runtime template (1.1, or set_chat_template with empty strings) the caller
         * wrote the template into the text, as Rockchip's 1.1 examples do: its markers are
         * special tokens. With a template, the user's text stays text. */
        int raw = !templated || (c->custom_template && !*c->c_prefix && !*c->c_postfix);
        if (tokenize_text(c, text, raw, &li->tokens) != 0) return -1;
    }
    if (tokenize_text(c, postfix, 1, &li->tokens) != 0) return -1;
    if (templated && !c->custom_template && c->cfg.supports_thinking && !li->enable_thinking)
        tokenize_text(c, c->cfg.think_off, 1, &li->tokens);
    if (!templated || c->custom_template) li->enable_thinking = 0;
    else if (!c->cfg.supports_thinking) li->enable_thinking = 0;
    return 0;
}

static int call_back(host_ctx *c, RKLLMResult *r, LLMCallState state, void *userdata) {
    if (!c->cb) return 0;
#if RKLLM_HOST_FAMILY >= 121
    int ret = c->cb(r, userdata, state);
    if (ret != 0 && ret != 1 && ret != 2)
        host_log('W', "the result callback returned %d; expected 0 (continue), 1 (pause) or 2 "
                      "(release): treated as 0",
                 ret);
#if RKLLM_HOST_FAMILY < 130
    if (ret == 2) ret = 0;
#endif
    return (ret == 1 || ret == 2) ? ret : 0;
#else
    c->cb(r, userdata, state);
    return 0;
#endif
}

/* Sleep until `deadline` (ms), waking early on abort. */
static void pace_until(host_ctx *c, double deadline) {
    for (;;) {
        double left = deadline - now_ms();
        if (left <= 0 || atomic_load(&c->abort_flag)) return;
        if (left > 2) left = 2;
        struct timespec ts = {0, (long)(left * 1e6)};
        nanosleep(&ts, NULL);
    }
}

/* Move complete UTF-8 characters from the pending bytes into `out`. */
static int take_complete_utf8(host_seq *s, char *out, size_t cap, int flush) {
    int i = 0;
    while (i < s->npending) {
        unsigned char b = (unsigned char)s->pending[i];
        int len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 1;
        if (i + len > s->npending) break;
        int ok = 1;
        for (int k = 1; k < len; k++)
            if (((unsigned char)s->pending[i + k] >> 6) != 2) ok = 0;
        i += ok ? len : 1;
    }
    if (flush) i = s->npending;
    size_t n = (size_t)i < cap - 1 ? (size_t)i : cap - 1;
    memcpy(out, s->pending, n);
    out[n] = 0;
    memmove(s->pending, s->pending + i, (size_t)(s->npending - i));
    s->npending -= i;
    return (int)n;
}

static void log_perf(const host_seq *s) {
    if (host_log_level < 1) return;
    host_log('I', "--------------------------------------------------------------------------");
    host_log('I', " Stage     Total Time (ms)     Tokens  Time per Token (ms)  Tokens per Second");
    host_log('I', " Prefill   %15.2f %10d %20.2f %18.2f", s->prefill_ms, s->prefill_tokens,
             s->prefill_tokens ? s->prefill_ms / s->prefill_tokens : 0.0,
             s->prefill_ms > 0 ? s->prefill_tokens * 1000.0 / s->prefill_ms : 0.0);
    host_log('I', " Generate  %15.2f %10d %20.2f %18.2f", s->generate_ms, s->generated,
             s->generated ? s->generate_ms / s->generated : 0.0,
             s->generate_ms > 0 ? s->generated * 1000.0 / s->generate_ms : 0.0);
    host_log('I', " Peak Memory Usage (GB) %.2f", peak_memory_mb() / 1024.0);
    host_log('I', "--------------------------------------------------------------------------");
}

static void fill_perf(RKLLMResult *r, const host_seq *s) {
#if RKLLM_HOST_FAMILY >= 121
    r->perf.prefill_time_ms = (float)s->prefill_ms;
    r->perf.prefill_tokens = s->prefill_tokens;
    r->perf.generate_time_ms = (float)s->generate_ms;
    r->perf.generate_tokens = s->generated;
    r->perf.memory_usage_mb = peak_memory_mb();
#else
    (void)r;
    (void)s;
#endif
}

static int has_lora(host_ctx *c, const char *name) {
    for (int i = 0; i < c->n_loras; i++)
        if (strcmp(c->loras[i], name) == 0) return 1;
    return 0;
}

static int save_prompt_cache(host_ctx *c, const char *path) {
    host_seq *s = &c->seqs[0];
    void *state = NULL;
    size_t size = 0;
    if (c->ops->state_save && c->ops->state_save(c->eng, 0, &state, &size) != 0) return -1;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(state);
        host_log('E', "cannot write prompt cache %s: %s", path, strerror(errno));
        return -1;
    }
    int32_t n = s->kv.n;
    uint64_t sz = size;
    fwrite("RKLLMPC1", 1, 8, f);
    fwrite(&n, sizeof n, 1, f);
    fwrite(s->kv.v, sizeof(int32_t), (size_t)n, f);
    fwrite(&sz, sizeof sz, 1, f);
    if (size) fwrite(state, 1, size, f);
    fclose(f);
    free(state);
    if (host_log_level >= 1) host_log('I', "saved prompt cache of %d tokens to %s", n, path);
    return 0;
}

/* The run itself; returns rkllm_run's result. Callbacks come from the calling thread. */
static int do_run(host_ctx *c, host_job *job) {
    char err[1024] = "";
    RKLLMResult results[HOST_MAX_BATCH];
    memset(results, 0, sizeof results);
    lane_input li[HOST_MAX_BATCH];
    memset(li, 0, sizeof li);
    int kv_before[HOST_MAX_BATCH];
    int n = c->n_batch, status = 0, paused = 0;
    int max_ctx = c->param.max_context_len;
    int max_new = c->param.max_new_tokens;
    if (job->max_new_tokens > 0) max_new = job->max_new_tokens;
    host_sampling smp = {c->param.top_k, c->param.top_p, c->param.temperature,
                         c->param.repeat_penalty, c->param.frequency_penalty,
                         c->param.presence_penalty, c->param.mirostat, c->param.mirostat_tau,
                         c->param.mirostat_eta};
    if (job->has_sampling) smp = job->sampling;
    int ignore_eos = 0;
#if RKLLM_HOST_FAMILY >= 130
    ignore_eos = c->param.ignore_eos_token;
#endif
    for (int i = 0; i < n; i++) {
        host_seq *s = &c->seqs[i];
        kv_before[i] = s->kv.n;
        s->done = s->generated = s->prefill_tokens = 0;
        s->prefill_ms = s->generate_ms = 0;
        s->npending = 0;
    }
    if (job->mode < 0 || job->mode > 2 || (job->mode == 2 && RKLLM_HOST_FAMILY < 120)) {
        snprintf(err, sizeof err, "invalid infer mode %d", job->mode);
        goto fail;
    }
    if (job->mode == 2 && n > 1) {
        snprintf(err, sizeof err, "Getting the logits is not supported for multiple batches.");
        goto fail;
    }
    if (job->lora_name && !has_lora(c, job->lora_name)) {
        snprintf(err, sizeof err, "lora adapter \"%s\" is not loaded: call rkllm_load_lora first",
                 job->lora_name);
        goto fail;
    }
    /* ---- prefill ---- */
    for (int i = 0; i < n; i++) {
        host_seq *s = &c->seqs[i];
        if (build_input(c, i, &job->inputs[i], &li[i], err, sizeof err) != 0) goto fail;
        int n_new = li[i].tokens.n;
        if (n_new >= max_ctx) {
            snprintf(err, sizeof err, "the input has %d tokens, more than max_context_len (%d) "
                                      "allows",
                     n_new, max_ctx);
            goto fail;
        }
        if (s->kv.n + n_new >= max_ctx) {
            /* shift the context: drop the oldest history after n_keep, as the runtime does */
            int keep = c->param.max_context_len;
#if RKLLM_HOST_FAMILY >= 120
            keep = c->param.n_keep >= 0 ? c->param.n_keep : s->system_len;
#else
            keep = s->system_len;
#endif
            if (keep > s->kv.n) keep = s->kv.n;
            int drop = s->kv.n + n_new - max_ctx + max_ctx / 4;
            if (drop > s->kv.n - keep) drop = s->kv.n - keep;
            if (host_log_level >= 1) host_log('W', "context full: dropping %d tokens after %d", drop, keep);
            c->ops->kv_remove(c->eng, i, keep, keep + drop);
            ivec_erase(&s->kv, keep, keep + drop);
            if (s->kv.n + n_new >= max_ctx) seq_truncate(c, i, 0);
        }
        int n_cached = s->kv.n;
        char *history = detokenize(c, s->kv.v + s->system_len, s->kv.n - s->system_len);
        if (li[i].new_system) s->system_len = li[i].new_system;
        ivec_append(&s->kv, li[i].tokens.v, li[i].tokens.n);
        /* a loaded prompt cache serves a conversation that starts with its tokens */
        if (i == 0 && n_cached == 0 && c->cache_loaded && c->cache_tokens.n <= s->kv.n &&
            memcmp(c->cache_tokens.v, s->kv.v, sizeof(int32_t) * (size_t)c->cache_tokens.n) == 0) {
            if (!c->ops->state_load ||
                c->ops->state_load(c->eng, 0, c->cache_state, c->cache_state_size,
                                   c->cache_tokens.n) == 0)
                n_cached = c->cache_tokens.n;
            if (host_log_level >= 1) host_log('I', "prompt cache hit: %d tokens reused", n_cached);
        }
        if (host_log_level >= 2) {
            char *pt = detokenize(c, li[i].tokens.v, li[i].tokens.n);
            host_log('I', "prompt text: \"%s\"", pt);
            free(pt);
            host_log('I', "keep history status: %d", job->keep_history);
        }
        host_run_info info = {li[i].input_text, history, li[i].role, job->lora_name,
                              (int)job->inputs[i].input_type, li[i].enable_thinking,
                              c->tools_offered, job->mode, li[i].embed, li[i].n_embed};
        double t0 = now_ms();
        int to_prefill = s->kv.n - n_cached;
        int rc = c->ops->prefill(c->eng, i, s->kv.v, s->kv.n, n_cached, &info, err, sizeof err);
        free(history);
        if (rc != 0) goto fail;
        if (c->cfg.prefill_tps > 0) pace_until(c, t0 + to_prefill * 1000.0 / c->cfg.prefill_tps);
        s->prefill_ms = now_ms() - t0;
        s->prefill_tokens = to_prefill;
    }
    if (job->save_cache) {
        if (save_prompt_cache(c, job->cache_path ? job->cache_path : "./prompt_cache.bin") != 0) {
            snprintf(err, sizeof err, "failed to save the prompt cache");
            goto fail;
        }
    }
    if (atomic_load(&c->abort_flag)) goto finish;
    /* ---- hidden states / logits ---- */
    if (job->mode == 1 || job->mode == 2) {
        for (int i = 0; i < n; i++) {
            RKLLMResult *r = &results[i];
            memset(r, 0, sizeof *r);
            r->token_id = -1;
            if (job->mode == 1) {
                const float *h;
                int nt, dim;
                if (c->ops->hidden(c->eng, i, &h, &nt, &dim) != 0) {
                    snprintf(err, sizeof err, "this model cannot return hidden states");
                    goto fail;
                }
                r->last_hidden_layer.hidden_states = h;
                r->last_hidden_layer.num_tokens = nt;
                r->last_hidden_layer.embd_size = dim;
            }
#if RKLLM_HOST_FAMILY >= 120
            else {
                const float *lg;
                int vocab;
                if (c->ops->logits(c->eng, i, &lg, &vocab) != 0) {
                    snprintf(err, sizeof err, "this model cannot return logits");
                    goto fail;
                }
                r->logits.logits = lg;
                r->logits.vocab_size = vocab;
                r->logits.num_tokens = 1;
            }
#endif
        }
#if RKLLM_HOST_FAMILY == 110
        LLMCallState st = RKLLM_RUN_GET_LAST_HIDDEN_LAYER;
#else
        LLMCallState st = RKLLM_RUN_NORMAL;
#endif
        if (call_back(c, results, st, job->userdata) == 1) paused = 1;
        goto finish;
    }
    /* ---- generation ---- */
    double t_gen = now_ms(), deadline = t_gen;
    int step = 0;
    for (;;) {
        if (atomic_load(&c->abort_flag)) break;
        int active = 0, emitted = 0, newly_done = 0;
        for (int i = 0; i < n; i++) {
            host_seq *s = &c->seqs[i];
            RKLLMResult *r = &results[i];
            memset(r, 0, sizeof *r);
            r->token_id = -1;
            r->text = NULL;
            if (s->done) continue;
            int32_t tok;
            int rc = (max_new > 0 && s->generated >= max_new)
                         ? 1
                         : c->ops->next_token(c->eng, i, &smp, ignore_eos, &tok);
            if (rc < 0) {
                snprintf(err, sizeof err, "the engine failed to produce a token");
                goto fail;
            }
            if (rc == 1) {
                s->done = 1;
                newly_done = 1;
                if (s->npending) { /* an incomplete character at the end: hand it over as is */
                    take_complete_utf8(s, s->text, sizeof s->text, 1);
                    r->text = s->text;
                    emitted = 1;
                }
                continue;
            }
            active = 1;
            if (s->kv.n + 1 >= max_ctx) {
                int keep = s->system_len;
#if RKLLM_HOST_FAMILY >= 120
                if (c->param.n_keep >= 0) keep = c->param.n_keep;
#endif
                if (keep > s->kv.n) keep = s->kv.n;
                int drop = (s->kv.n - keep) / 2;
                c->ops->kv_remove(c->eng, i, keep, keep + drop);
                ivec_erase(&s->kv, keep, keep + drop);
            }
            ivec_push(&s->kv, tok);
            c->ops->accept(c->eng, i, tok);
            char piece[200];
            int k = c->ops->token_bytes(c->eng, tok, c->param.skip_special_token, piece, sizeof piece);
            /* at most 3 bytes of an incomplete character are ever held, so a piece fits */
            int room = (int)sizeof s->pending - s->npending;
            if (k > room) k = room;
            memcpy(s->pending + s->npending, piece, (size_t)k);
            s->npending += k;
            /* long pieces are emitted whole: take everything complete */
            take_complete_utf8(s, s->text, sizeof s->text, 0);
            r->text = s->text;
            r->token_id = tok;
            if (s->text[0]) emitted = 1;
            s->generated++;
        }
        if (!active && !emitted) break;
        if (c->cfg.decode_tps > 0 && active) {
            deadline += 1000.0 / c->cfg.decode_tps;
            pace_until(c, deadline);
        }
        if (c->cfg.slow_token_index == step && c->cfg.slow_token_ms > 0)
            pace_until(c, now_ms() + c->cfg.slow_token_ms);
        if (c->cfg.error_after_tokens >= 0 && step >= c->cfg.error_after_tokens) {
            snprintf(err, sizeof err, "injected error after %d tokens (model file error_after_tokens)",
                     c->cfg.error_after_tokens);
            goto fail;
        }
        if (c->cfg.hang_after_tokens >= 0 && step >= c->cfg.hang_after_tokens) {
            host_log('W', "model file hang_after_tokens: no more callbacks until rkllm_abort");
            while (!atomic_load(&c->abort_flag)) pace_until(c, now_ms() + 50);
            break;
        }
        step++;
        LLMCallState st = emitted ? RKLLM_RUN_NORMAL : RKLLM_RUN_WAITING;
        if (n == 1 && !emitted && !active) break;
        if (n == 1 && newly_done && !emitted) break;
        for (int i = 0; i < n; i++)
            if (results[i].text == NULL && st == RKLLM_RUN_WAITING && !c->seqs[i].done)
                results[i].text = "";
        if (call_back(c, results, st, job->userdata) == 1) {
            paused = 1;
            break;
        }
        if (c->cfg.crash_after_tokens >= 0 && step >= c->cfg.crash_after_tokens &&
            (!c->cfg.crash_on || strcasestr(li[0].input_text, c->cfg.crash_on))) {
            /* a fault inside the runtime, as librkllmrt's on a board: right after a callback */
            host_log('E', "model file crash_after_tokens: raising SIGSEGV");
            raise(SIGSEGV);
        }
        (void)newly_done;
    }
    for (int i = 0; i < n; i++) c->seqs[i].generate_ms = now_ms() - t_gen;
finish:
    if (!paused) {
        for (int i = 0; i < n; i++) {
            memset(&results[i], 0, sizeof results[i]);
            results[i].token_id = -1;
            fill_perf(&results[i], &c->seqs[i]);
            log_perf(&c->seqs[i]);
        }
        int keep = job->keep_history;
        for (int i = 0; i < n; i++)
            if (!keep) seq_truncate(c, i, c->seqs[i].system_len);
        if (host_log_level >= 2)
            for (int i = 0; i < n; i++) host_log('I', "current kv cache size: %d", c->seqs[i].kv.n);
        call_back(c, results, RKLLM_RUN_FINISH, job->userdata);
    }
    goto done;
fail:
    host_log('E', "%s", err);
    for (int i = 0; i < n; i++) {
        seq_truncate(c, i, kv_before[i]);
        memset(&results[i], 0, sizeof results[i]);
        results[i].token_id = -1;
    }
    call_back(c, results, RKLLM_RUN_ERROR, job->userdata);
    status = -1;
done:
    for (int i = 0; i < n; i++) {
        ivec_free(&li[i].tokens);
        free(li[i].input_text);
    }
    return status;
}

/* ---------- jobs: deep copies of the caller's input ---------- */

static char *keep_str(host_job *j, int lane, int slot, const char *s) {
    if (!s) return NULL;
    j->strings[lane][slot] = strdup(s);
    return j->strings[lane][slot];
}

static void *keep_array(host_job *j, int lane, int slot, const void *p, size_t bytes) {
    if (!p || !bytes) return NULL;
    j->arrays[lane][slot] = malloc(bytes);
    memcpy(j->arrays[lane][slot], p, bytes);
    return j->arrays[lane][slot];
}

static host_job *make_job(host_ctx *c, const RKLLMInput *inputs, const RKLLMInferParam *ip,
                          void *userdata) {
    host_job *j = calloc(1, sizeof *j);
    j->userdata = userdata ? userdata : c->cb_userdata;
    size_t hidden = (size_t)c->cfg.hidden_size;
    for (int i = 0; i < c->n_batch; i++) {
        RKLLMInput *d = &j->inputs[i];
        *d = inputs[i];
#if RKLLM_HOST_FAMILY >= 121
        d->role = keep_str(j, i, 0, inputs[i].role);
#endif
        switch (inputs[i].input_type) {
        case RKLLM_INPUT_PROMPT:
            d->prompt_input = keep_str(j, i, 1, inputs[i].prompt_input);
            break;
        case RKLLM_INPUT_TOKEN:
            d->token_input.input_ids = keep_array(j, i, 0, inputs[i].token_input.input_ids,
                                                  sizeof(int32_t) * inputs[i].token_input.n_tokens);
            break;
        case RKLLM_INPUT_EMBED:
            d->embed_input.embed = keep_array(j, i, 0, inputs[i].embed_input.embed,
                                              sizeof(float) * hidden * inputs[i].embed_input.n_tokens);
            break;
        case RKLLM_INPUT_MULTIMODAL: {
            RKLLMMultiModalInput *m = &d->multimodal_input;
            m->prompt = keep_str(j, i, 1, m->prompt);
#if RKLLM_HOST_FAMILY >= 130
            m->image.image_embed = keep_array(j, i, 0, m->image.image_embed,
                                              sizeof(float) * hidden * m->image.n_image_tokens * m->image.n_image);
            m->video.video_embed = keep_array(j, i, 1, m->video.video_embed,
                                              sizeof(float) * hidden * m->video.n_frame_tokens *
                                                  m->video.n_frame_per_video * m->video.n_video);
            m->image.image_start = keep_str(j, i, 2, m->image.image_start);
            m->image.image_end = keep_str(j, i, 3, m->image.image_end);
            m->image.image_content = keep_str(j, i, 4, m->image.image_content);
            m->video.video_start = keep_str(j, i, 5, m->video.video_start);
            m->video.video_end = keep_str(j, i, 6, m->video.video_end);
            m->video.video_content = keep_str(j, i, 7, m->video.video_content);
#elif RKLLM_HOST_FAMILY >= 121
            m->image_embed = keep_array(j, i, 0, m->image_embed,
                                        sizeof(float) * hidden * m->n_image_tokens * (m->n_image ? m->n_image : 1));
#else
            m->image_embed = keep_array(j, i, 0, m->image_embed, sizeof(float) * hidden * m->n_image_tokens);
#endif
            break;
        }
        default:
            break;
        }
    }
    if (ip) {
        j->mode = (int)ip->mode;
        if (ip->lora_params && ip->lora_params->lora_adapter_name)
            j->lora_name = strdup(ip->lora_params->lora_adapter_name);
        if (ip->prompt_cache_params && ip->prompt_cache_params->save_prompt_cache) {
            j->save_cache = 1;
            j->cache_path = host_strdup(ip->prompt_cache_params->prompt_cache_path);
        }
#if RKLLM_HOST_FAMILY >= 120
        j->keep_history = ip->keep_history;
#endif
#if RKLLM_HOST_FAMILY >= 130
        j->max_new_tokens = ip->max_new_tokens;
        if (ip->sampling_params) {
            const RKLLMSamplingParam *sp = ip->sampling_params;
            j->has_sampling = 1;
            j->sampling = (host_sampling){sp->top_k, sp->top_p, sp->temperature, sp->repeat_penalty,
                                          sp->frequency_penalty, sp->presence_penalty, sp->mirostat,
                                          sp->mirostat_tau, sp->mirostat_eta};
            if (host_log_level >= 2)
                host_log('I', "per-run sampling: top_k %d, top_p %.2f, temperature %.2f",
                         sp->top_k, sp->top_p, sp->temperature);
        }
#endif
    }
    return j;
}

static void free_job(host_job *j) {
    for (int i = 0; i < HOST_MAX_BATCH; i++) {
        for (int k = 0; k < 8; k++) free(j->strings[i][k]);
        for (int k = 0; k < 2; k++) free(j->arrays[i][k]);
    }
    free(j->lora_name);
    free(j->cache_path);
    free(j);
}

typedef struct {
    host_ctx *c;
    host_job *job;
    int status;
    int detached; /* an async run frees its own task */
} run_task;

static void *run_thread(void *arg) {
    run_task *t = arg;
    host_ctx *c = t->c;
    t->status = do_run(c, t->job);
    free_job(t->job);
    if (t->detached) free(t);
    atomic_store(&c->running, 0);
    return NULL;
}

static int start_run(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *ip, void *userdata,
                     int async) {
    host_ctx *c = handle;
    if (!c || !input) {
        host_log('E', "rkllm_run: handle and input must not be NULL");
        return -1;
    }
    int expected = 0;
    if (!atomic_compare_exchange_strong(&c->running, &expected, 1)) {
        host_log('E', "a run is already in progress on this handle");
        return -1;
    }
    atomic_store(&c->abort_flag, 0);
    host_job *job = make_job(c, input, ip, userdata);
    if (async) {
        run_task *t = calloc(1, sizeof *t);
        t->c = c;
        t->job = job;
        t->detached = 1;
        pthread_t th;
        if (pthread_create(&th, NULL, run_thread, t) != 0) {
            free_job(job);
            free(t);
            atomic_store(&c->running, 0);
            return -1;
        }
        pthread_detach(th); /* rkllm_destroy waits for `running` to drop */
        return 0;
    }
    if (c->cfg.runtime_thread) {
        run_task t = {c, job, 0, 0};
        pthread_t th;
        if (pthread_create(&th, NULL, run_thread, &t) != 0) {
            free_job(job);
            atomic_store(&c->running, 0);
            return -1;
        }
        pthread_join(th, NULL);
        return t.status;
    }
    int status = do_run(c, job);
    free_job(job);
    atomic_store(&c->running, 0);
    return status;
}

HOST_API int rkllm_run(LLMHandle handle, RKLLMInput *rkllm_input, RKLLMInferParam *rkllm_infer_params,
                       void *userdata) {
    return start_run(handle, rkllm_input, rkllm_infer_params, userdata, 0);
}

HOST_API int rkllm_run_async(LLMHandle handle, RKLLMInput *rkllm_input,
                             RKLLMInferParam *rkllm_infer_params, void *userdata) {
    return start_run(handle, rkllm_input, rkllm_infer_params, userdata, 1);
}

HOST_API int rkllm_abort(LLMHandle handle) {
    host_ctx *c = handle;
    if (!c) return -1;
    atomic_store(&c->abort_flag, 1);
    return 0;
}

HOST_API int rkllm_is_running(LLMHandle handle) {
    host_ctx *c = handle;
    return c ? atomic_load(&c->running) : 0;
}

HOST_API int rkllm_destroy(LLMHandle handle) {
    host_ctx *c = handle;
    if (!c) return -1;
    atomic_store(&c->abort_flag, 1);
    while (atomic_load(&c->running)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    c->ops->destroy(c->eng);
    for (int i = 0; i < HOST_MAX_BATCH; i++) ivec_free(&c->seqs[i].kv);
    for (int i = 0; i < c->n_loras; i++) free(c->loras[i]);
    free(c->c_system);
    free(c->c_prefix);
    free(c->c_postfix);
    free(c->tools_system);
    free(c->tools_json);
    free(c->tool_response_str);
    ivec_free(&c->cache_tokens);
    free(c->cache_state);
    free(c->model_path);
    config_free(&c->cfg);
    pthread_mutex_destroy(&c->lock);
    free(c);
    return 0;
}

static int busy(host_ctx *c, const char *what) {
    if (atomic_load(&c->running)) {
        host_log('E', "%s: a run is in progress", what);
        return 1;
    }
    return 0;
}

HOST_API int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *lora) {
    host_ctx *c = handle;
    if (!c || !lora || !lora->lora_adapter_path || !lora->lora_adapter_name) {
        host_log('E', "rkllm_load_lora: handle, adapter, path and name must be set");
        return -1;
    }
    if (busy(c, "rkllm_load_lora")) return -1;
    if (access(lora->lora_adapter_path, R_OK) != 0) {
        host_log('E', "cannot read lora adapter %s: %s", lora->lora_adapter_path, strerror(errno));
        return -1;
    }
    char err[512] = "";
    if (c->ops->load_lora(c->eng, lora->lora_adapter_path, lora->lora_adapter_name, lora->scale,
                          err, sizeof err) != 0) {
        host_log('E', "failed to load lora adapter %s: %s", lora->lora_adapter_path, err);
        return -1;
    }
    if (!has_lora(c, lora->lora_adapter_name) && c->n_loras < 32)
        c->loras[c->n_loras++] = strdup(lora->lora_adapter_name);
    host_log('I', "loaded lora adapter \"%s\" from %s (scale %.2f)", lora->lora_adapter_name,
             lora->lora_adapter_path, lora->scale);
    return 0;
}

HOST_API int rkllm_load_prompt_cache(LLMHandle handle, const char *path) {
    host_ctx *c = handle;
    if (!c || !path) return -1;
    if (busy(c, "rkllm_load_prompt_cache")) return -1;
    FILE *f = fopen(path, "rb");
    if (!f) {
        host_log('E', "cannot open prompt cache %s: %s", path, strerror(errno));
        return -1;
    }
    char magic[8];
    int32_t n = 0;
    uint64_t sz = 0;
    int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, "RKLLMPC1", 8) == 0 &&
             fread(&n, sizeof n, 1, f) == 1 && n >= 0 && n <= (1 << 24);
    ivec toks = {0};
    void *state = NULL;
    if (ok) {
        for (int i = 0; i < n && ok; i++) {
            int32_t t;
            ok = fread(&t, sizeof t, 1, f) == 1;
            ivec_push(&toks, t);
        }
        ok = ok && fread(&sz, sizeof sz, 1, f) == 1 && sz < (1ULL << 34);
        if (ok && sz) {
            state = malloc(sz);
            ok = fread(state, 1, sz, f) == sz;
        }
    }
    fclose(f);
    if (!ok) {
        host_log('E', "%s is not a prompt cache file (or it is truncated)", path);
        ivec_free(&toks);
        free(state);
        return -1;
    }
    ivec_free(&c->cache_tokens);
    free(c->cache_state);
    c->cache_tokens = toks;
    c->cache_state = state;
    c->cache_state_size = sz;
    c->cache_loaded = 1;
    host_log('I', "loaded prompt cache %s (%d tokens)", path, n);
    return 0;
}

HOST_API int rkllm_release_prompt_cache(LLMHandle handle) {
    host_ctx *c = handle;
    if (!c) return -1;
    ivec_free(&c->cache_tokens);
    free(c->cache_state);
    c->cache_state = NULL;
    c->cache_state_size = 0;
    c->cache_loaded = 0;
    return 0;
}

#if RKLLM_HOST_FAMILY >= 120
#if RKLLM_HOST_FAMILY >= 121
HOST_API int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos,
                                  int *end_pos) {
#else
HOST_API int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt) {
    int *start_pos = NULL, *end_pos = NULL;
#endif
    host_ctx *c = handle;
    if (!c) return -1;
    if (busy(c, "rkllm_clear_kv_cache")) return -1;
    if (!start_pos && !end_pos) {
        clear_all(c, keep_system_prompt);
        return 0;
    }
    if (!start_pos || !end_pos) {
        host_log('E', "rkllm_clear_kv_cache: start_pos and end_pos must both be set or both NULL");
        return -1;
    }
    for (int i = 0; i < c->n_batch; i++) {
        host_seq *s = &c->seqs[i];
        if (start_pos[i] >= end_pos[i]) continue;
        if (start_pos[i] < 0 || end_pos[i] > s->kv.n) {
            host_log('E', "rkllm_clear_kv_cache: range [%d, %d) is outside the cache (size %d)",
                     start_pos[i], end_pos[i], s->kv.n);
            return -1;
        }
    }
    for (int i = 0; i < c->n_batch; i++) {
        host_seq *s = &c->seqs[i];
        if (start_pos[i] >= end_pos[i]) continue;
        c->ops->kv_remove(c->eng, i, start_pos[i], end_pos[i]);
        ivec_erase(&s->kv, start_pos[i], end_pos[i]);
        if (s->system_len > start_pos[i]) s->system_len = start_pos[i];
    }
    return 0;
}

HOST_API int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt,
                                     const char *prompt_prefix, const char *prompt_postfix) {
    host_ctx *c = handle;
    if (!c || !system_prompt || !prompt_prefix || !prompt_postfix) {
        host_log('E', "rkllm_set_chat_template: arguments must not be NULL");
        return -1;
    }
    if (busy(c, "rkllm_set_chat_template")) return -1;
    free(c->c_system);
    free(c->c_prefix);
    free(c->c_postfix);
    c->c_system = strdup(system_prompt);
    c->c_prefix = strdup(prompt_prefix);
    c->c_postfix = strdup(prompt_postfix);
    c->custom_template = 1;
    host_log('I', "reset chat template:");
    host_log('I', "system_prompt: %s", system_prompt);
    host_log('I', "prompt_prefix: %s", prompt_prefix);
    host_log('I', "prompt_postfix: %s", prompt_postfix);
    host_log('W', "Calling rkllm_set_chat_template will disable the internal automatic chat "
                  "template parsing, including enable_thinking and function tools.");
    clear_all(c, 0);
    host_log('I', "All kv caches have been deleted!");
    return 0;
}
#endif

#if RKLLM_HOST_FAMILY >= 121
HOST_API int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes) {
    host_ctx *c = handle;
    if (!c || !cache_sizes) return -1;
    for (int i = 0; i < c->n_batch; i++) cache_sizes[i] = c->seqs[i].kv.n;
    return 0;
}

HOST_API int rkllm_set_function_tools(LLMHandle handle, const char *system_prompt,
                                      const char *tools, const char *tool_response_str) {
    host_ctx *c = handle;
    if (!c || !tools) return -1;
    if (busy(c, "rkllm_set_function_tools")) return -1;
    if (!c->cfg.has_template) {
        host_log('E', "Failed to set function tools, possibly because the chat_template is empty.");
        return -1;
    }
    const char *p = tools;
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    if (*p != '[') {
        host_log('E', "Failed to set function tools: tools must be a JSON array");
        return -1;
    }
    free(c->tools_system);
    free(c->tools_json);
    free(c->tool_response_str);
    c->tools_system = strdup(system_prompt ? system_prompt : "");
    c->tools_json = strdup(tools);
    c->tool_response_str = strdup(tool_response_str ? tool_response_str : "tool_response");
    c->tools_set = 1;
    const char *first = c->tools_json + strspn(c->tools_json, " \t\r\n[");
    c->tools_offered = *first && *first != ']';
    if (c->custom_template)
        host_log('W', "function tools are not injected while a custom chat template is set");
    clear_all(c, 0);
    return 0;
}

HOST_API int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam *p) {
    host_ctx *c = handle;
    if (!c || !p) return -1;
    if (!c->param.extend_param.use_cross_attn) {
        host_log('E', "cross attention is off: set extend_param.use_cross_attn = 1 at init");
        return -1;
    }
    if (!p->encoder_k_cache || !p->encoder_v_cache || !p->encoder_mask || !p->encoder_pos ||
        p->num_tokens <= 0) {
        host_log('E', "rkllm_set_cross_attn_params: every buffer must be set and num_tokens > 0");
        return -1;
    }
    c->cross_attn_tokens = p->num_tokens;
    if (host_log_level >= 1) host_log('I', "cross attention: %d encoder tokens", p->num_tokens);
    return 0;
}
#endif
