/* Internal interface of the host runtime: what runtime.c shares with its engines.
 *
 * runtime.c owns the librkllmrt semantics (templates, KV-cache bookkeeping, callbacks, UTF-8,
 * pacing, perf stats, faults); an engine only tokenizes, detokenizes and produces tokens,
 * hidden states and logits. The scripted engine is engine_scripted.c; the GGUF engine on
 * llama.cpp plugs in through the same table. */
#ifndef RKLLM_HOST_INTERNAL_H
#define RKLLM_HOST_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "rkllm_abi.h"

#define HOST_MAX_BATCH 8
#define HOST_API __attribute__((visibility("default")))

typedef struct {
    int32_t *v;
    int n, cap;
} ivec;

void ivec_push(ivec *a, int32_t x);
void ivec_append(ivec *a, const int32_t *xs, int n);
void ivec_free(ivec *a);
void ivec_erase(ivec *a, int start, int end);

typedef struct {
    char *s;
    size_t n, cap;
} strbuf;

void sb_add(strbuf *b, const char *s, size_t n);
void sb_adds(strbuf *b, const char *s);
void sb_free(strbuf *b);

/* Log like librkllmrt: "I rkllm: ..." / "W rkllm: ..." / "E rkllm: ..." on stderr. */
void host_log(char level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern int host_log_level; /* RKLLM_LOG_LEVEL: 0 quiet, 1 perf, 2 prompts and KV cache */

/* What the model file says about the runtime side: template, limits, faults, pacing. */
typedef struct {
    int max_context_limit;
    int vocab_size;
    int hidden_size;
    int has_template;      /* 0: the model has no chat template (set_function_tools fails) */
    char *system_prompt;   /* full system block, markers included ("" = none) */
    char *system_format;   /* wraps a tools system prompt; "{}" is replaced */
    char *prompt_prefix;
    char *prompt_postfix;
    char *think_off;       /* appended to the postfix when enable_thinking is false */
    int supports_thinking;
    double prefill_tps;    /* 0 = as fast as the engine goes */
    double decode_tps;
    int runtime_thread;    /* callbacks from a runtime-owned thread instead of the caller's */
    char *fail_init;       /* init fails with this message */
    int error_after_tokens;    /* RKLLM_RUN_ERROR after N tokens (-1 off) */
    int slow_token_index;      /* this token (0-based) is delayed by slow_token_ms */
    int slow_token_ms;
    int hang_after_tokens;     /* stop calling back after N tokens until aborted (-1 off) */
    int crash_after_tokens;    /* SIGSEGV once the callback of token N returns (-1 off) */
    char *crash_on;            /* ... only in runs whose input contains this (NULL: every run) */
    int needs_tokenizer_callback; /* 1.3.0 models exported without a tokenizer */
    char *platform;
    char *toolkit_version;
    char *dtype;
} host_model_config;

typedef struct host_engine host_engine;

/* What a run asks of the engine for one sequence. */
typedef struct {
    const char *input_text;   /* the user's text before templating (NULL for embeddings) */
    const char *history_text; /* detokenized KV cache before this input */
    const char *role;         /* "user" or "tool" */
    const char *lora_name;    /* NULL = base model */
    int input_type;
    int enable_thinking;      /* the model's thinking is on for this run */
    int tools_set;
    int mode;                 /* RKLLMInferMode */
    const float *embed;       /* embedding input, n_embed x hidden_size */
    int n_embed;
} host_run_info;

typedef struct {
    int top_k;
    float top_p, temperature, repeat_penalty, frequency_penalty, presence_penalty;
    int mirostat;
    float mirostat_tau, mirostat_eta;
} host_sampling;

typedef struct {
    const char *name;
    /* Parse the model; fill cfg's runtime-side fields. 0 or -1 with err set. */
    int (*load)(host_engine **out, const char *path, host_model_config *cfg, char *err,
                size_t errlen);
    /* Create what a run needs for a context of n_ctx tokens and n_seq lanes (NULL: nothing). */
    int (*configure)(host_engine *e, int n_ctx, int n_seq, char *err, size_t errlen);
    void (*destroy)(host_engine *e);
    /* Tokenize UTF-8 text, appending ids to out. parse_special: template markers are tokens. */
    int (*tokenize)(host_engine *e, const char *text, size_t len, int parse_special, ivec *out);
    /* Bytes of one token (may be part of a UTF-8 character). Returns the count. */
    int (*token_bytes)(host_engine *e, int32_t tok, int skip_special, char *buf, int cap);
    /* Prefill `tokens[n_cached..n)` of sequence seq; the engine already holds n_cached. */
    int (*prefill)(host_engine *e, int seq, const int32_t *tokens, int n, int n_cached,
                   const host_run_info *info, char *err, size_t errlen);
    /* The next token of seq (1 = end of generation, 0 = *tok set, -1 error). */
    int (*next_token)(host_engine *e, int seq, const host_sampling *s, int ignore_eos,
                      int32_t *tok);
    /* The token was appended to seq's context. */
    int (*accept)(host_engine *e, int seq, int32_t tok);
    /* Remove positions [start, end) of seq's context; later positions shift down. */
    int (*kv_remove)(host_engine *e, int seq, int start, int end);
    /* Hidden states (n x dim) of the last prefill's tokens; valid until the next call. */
    int (*hidden)(host_engine *e, int seq, const float **out, int *n, int *dim);
    /* Logits of the last position (vocab floats); valid until the next call. */
    int (*logits)(host_engine *e, int seq, const float **out, int *vocab);
    /* Load a LoRA adapter file; 0 or -1. */
    int (*load_lora)(host_engine *e, const char *path, const char *name, float scale, char *err,
                     size_t errlen);
    /* Serialize / restore seq's context state for prompt caches (NULL = tokens only). */
    int (*state_save)(host_engine *e, int seq, void **data, size_t *size);
    int (*state_load)(host_engine *e, int seq, const void *data, size_t size, int n_tokens);
} host_engine_ops;

extern const host_engine_ops scripted_engine_ops;
#ifdef RKLLM_HOST_WITH_GGUF
extern const host_engine_ops gguf_engine_ops;
#endif

uint64_t host_hash(const char *s, size_t n);
char *host_strdup(const char *s);

#endif
