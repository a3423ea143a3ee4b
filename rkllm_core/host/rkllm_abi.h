/* The librkllmrt C interface for one layout family, in plain C11.
 *
 * Rockchip's rkllm.h is C++-only (<cstdint>, bool without stdbool), so the host runtime keeps
 * its own declarations. Select the family with -DRKLLM_HOST_FAMILY=110|120|121|123|130
 * (1.1.x, 1.2.0, 1.2.1-1.2.2, 1.2.3, 1.3.0). tests/host/test_host_layout.py checks every size
 * and offset here against abi.json, on LP64 and, where gcc -m32 works, ILP32.
 * Only gcc's freestanding headers are used, so the layout check needs no 32-bit libc. */
#ifndef RKLLM_HOST_ABI_H
#define RKLLM_HOST_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef RKLLM_HOST_FAMILY
#define RKLLM_HOST_FAMILY 130
#endif

#if RKLLM_HOST_FAMILY != 110 && RKLLM_HOST_FAMILY != 120 && RKLLM_HOST_FAMILY != 121 && \
    RKLLM_HOST_FAMILY != 123 && RKLLM_HOST_FAMILY != 130
#error "RKLLM_HOST_FAMILY must be 110, 120, 121, 123 or 130"
#endif

typedef void *LLMHandle;

typedef enum {
    RKLLM_RUN_NORMAL = 0,
    RKLLM_RUN_WAITING = 1,
    RKLLM_RUN_FINISH = 2,
    RKLLM_RUN_ERROR = 3,
#if RKLLM_HOST_FAMILY == 110
    RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4,
#endif
} LLMCallState;

typedef enum {
    RKLLM_INPUT_PROMPT = 0,
    RKLLM_INPUT_TOKEN = 1,
    RKLLM_INPUT_EMBED = 2,
    RKLLM_INPUT_MULTIMODAL = 3,
} RKLLMInputType;

typedef enum {
    RKLLM_INFER_GENERATE = 0,
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1,
#if RKLLM_HOST_FAMILY >= 120
    RKLLM_INFER_GET_LOGITS = 2,
#endif
} RKLLMInferMode;

typedef struct {
    int32_t base_domain_id;
#if RKLLM_HOST_FAMILY >= 120
    int8_t embed_flash;
    int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
#if RKLLM_HOST_FAMILY >= 121
    uint8_t n_batch;
    int8_t use_cross_attn;
    uint8_t reserved[104];
#else
    uint8_t reserved[106];
#endif
#else
    uint8_t reserved[112];
#endif
} RKLLMExtendParam;

typedef struct {
    const char *model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
#if RKLLM_HOST_FAMILY >= 120
    int32_t n_keep;
#endif
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
#if RKLLM_HOST_FAMILY >= 130
    bool ignore_eos_token;
#endif
    bool is_async;
#if RKLLM_HOST_FAMILY < 130
    const char *img_start;
    const char *img_end;
    const char *img_content;
#endif
    RKLLMExtendParam extend_param;
} RKLLMParam;

typedef struct {
    const char *lora_adapter_path;
    const char *lora_adapter_name;
    float scale;
} RKLLMLoraAdapter;

typedef struct {
    float *embed;
    size_t n_tokens;
} RKLLMEmbedInput;

typedef struct {
    int32_t *input_ids;
    size_t n_tokens;
} RKLLMTokenInput;

#if RKLLM_HOST_FAMILY >= 130
typedef struct {
    char *prompt;
    struct {
        float *image_embed;
        size_t n_image_tokens;
        size_t n_image;
        const char *image_start;
        const char *image_end;
        const char *image_content;
        size_t image_width;
        size_t image_height;
    } image;
    struct {
        float *video_embed;
        size_t n_frame_tokens;
        size_t n_frame_per_video;
        size_t n_video;
        const char *video_start;
        const char *video_end;
        const char *video_content;
        size_t frame_width;
        size_t frame_height;
    } video;
} RKLLMMultiModalInput;
#else
typedef struct {
    char *prompt;
    float *image_embed;
    size_t n_image_tokens;
#if RKLLM_HOST_FAMILY >= 121
    size_t n_image;
    size_t image_width;
    size_t image_height;
#endif
} RKLLMMultiModalInput;
#endif
#if RKLLM_HOST_FAMILY < 123
typedef RKLLMMultiModalInput RKLLMMultiModelInput; /* the header's name until 1.2.3 */
#endif

typedef struct {
#if RKLLM_HOST_FAMILY >= 121
    const char *role;
    bool enable_thinking;
#endif
    RKLLMInputType input_type;
    union {
        const char *prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
        RKLLMMultiModalInput multimodal_input;
    };
} RKLLMInput;

typedef struct {
    const char *lora_adapter_name;
} RKLLMLoraParam;

typedef struct {
    int save_prompt_cache;
    const char *prompt_cache_path;
} RKLLMPromptCacheParam;

#if RKLLM_HOST_FAMILY >= 121
typedef struct {
    float *encoder_k_cache;
    float *encoder_v_cache;
    float *encoder_mask;
    int32_t *encoder_pos;
    int num_tokens;
} RKLLMCrossAttnParam;
#endif

#if RKLLM_HOST_FAMILY >= 130
typedef struct {
    int32_t top_k;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
} RKLLMSamplingParam;
#endif

typedef struct {
    RKLLMInferMode mode;
    RKLLMLoraParam *lora_params;
    RKLLMPromptCacheParam *prompt_cache_params;
#if RKLLM_HOST_FAMILY >= 130
    RKLLMSamplingParam *sampling_params;
#endif
#if RKLLM_HOST_FAMILY >= 120
    int keep_history;
#endif
#if RKLLM_HOST_FAMILY >= 130
    int32_t max_new_tokens;
#endif
} RKLLMInferParam;

typedef struct {
    const float *hidden_states;
    int embd_size;
    int num_tokens;
} RKLLMResultLastHiddenLayer;

#if RKLLM_HOST_FAMILY >= 120
typedef struct {
    const float *logits;
    int vocab_size;
    int num_tokens;
} RKLLMResultLogits;
#endif

#if RKLLM_HOST_FAMILY >= 121
typedef struct {
    float prefill_time_ms;
    int prefill_tokens;
    float generate_time_ms;
    int generate_tokens;
    float memory_usage_mb;
} RKLLMPerfStat;
#endif

typedef struct {
    const char *text;
    int32_t token_id;
    RKLLMResultLastHiddenLayer last_hidden_layer;
#if RKLLM_HOST_FAMILY >= 120
    RKLLMResultLogits logits;
#endif
#if RKLLM_HOST_FAMILY >= 121
    RKLLMPerfStat perf;
#endif
} RKLLMResult;

#if RKLLM_HOST_FAMILY >= 121
typedef int (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);
#else
typedef void (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);
#endif

#if RKLLM_HOST_FAMILY >= 130
typedef int (*LLMTokenizerCallback)(void *userdata, const char *text, int32_t text_len,
                                    int32_t *tokens, int32_t n_tokens_max);
typedef int (*LLMGetEmbedCallback)(void *userdata, int32_t *tokens, uint64_t num_tokens,
                                   void *embed, uint64_t len);
typedef struct {
    LLMResultCallback result_callback;
    void *result_userdata;
    LLMTokenizerCallback tokenizer_callback;
    void *tokenizer_userdata;
    LLMGetEmbedCallback embed_callback;
    void *embed_userdata;
} RKLLMCallback;
#define RKLLM_INIT_CALLBACK_T RKLLMCallback *
#else
#define RKLLM_INIT_CALLBACK_T LLMResultCallback
#endif

#endif
