/* The floor for the per-token benchmark: the runtime called from C with a callback that only
 * counts tokens. Compiled at benchmark time against rkllm_core/host/rkllm_abi.h (family 1.3.0)
 * and loaded with dlopen, so it runs the very library file the Python side uses.
 *
 * usage: harness LIBRARY MODEL MAX_CONTEXT_LEN RUNS
 * prints one line per measured run: "<tokens> <nanoseconds>" (one warm-up run first). */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rkllm_abi.h"

typedef RKLLMParam (*default_param_fn)(void);
typedef int (*init_fn)(LLMHandle *, RKLLMParam *, RKLLMCallback *);
typedef int (*run_fn)(LLMHandle, RKLLMInput *, RKLLMInferParam *, void *);
typedef int (*destroy_fn)(LLMHandle);

static long tokens;

static int on_result(RKLLMResult *result, void *userdata, LLMCallState state) {
    (void)result;
    (void)userdata;
    if (state == RKLLM_RUN_NORMAL || state == RKLLM_RUN_WAITING) tokens++;
    return 0;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *need(void *lib, const char *name) {
    void *sym = dlsym(lib, name);
    if (!sym) {
        fprintf(stderr, "harness: %s not exported: %s\n", name, dlerror());
        exit(2);
    }
    return sym;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s LIBRARY MODEL MAX_CONTEXT_LEN RUNS\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "harness: %s\n", dlerror());
        return 2;
    }
    default_param_fn default_param = (default_param_fn)need(lib, "rkllm_createDefaultParam");
    init_fn init = (init_fn)need(lib, "rkllm_init");
    run_fn run = (run_fn)need(lib, "rkllm_run");
    destroy_fn destroy = (destroy_fn)need(lib, "rkllm_destroy");

    RKLLMParam param = default_param();
    param.model_path = argv[2];
    param.max_context_len = atoi(argv[3]);
    param.max_new_tokens = -1;
    RKLLMCallback callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.result_callback = on_result;
    LLMHandle handle = NULL;
    if (init(&handle, &param, &callbacks) != 0 || !handle) {
        fprintf(stderr, "harness: rkllm_init failed\n");
        return 1;
    }
    RKLLMInput input;
    memset(&input, 0, sizeof input);
    input.role = "user";
    input.input_type = RKLLM_INPUT_PROMPT;
    input.prompt_input = "go";
    RKLLMInferParam infer;
    memset(&infer, 0, sizeof infer);
    infer.mode = RKLLM_INFER_GENERATE;

    int runs = atoi(argv[4]);
    for (int i = -1; i < runs; i++) {
        tokens = 0;
        long long start = now_ns();
        if (run(handle, &input, &infer, NULL) != 0) {
            fprintf(stderr, "harness: rkllm_run failed\n");
            return 1;
        }
        long long elapsed = now_ns() - start;
        if (i >= 0) printf("%ld %lld\n", tokens, elapsed);
    }
    destroy(handle);
    return 0;
}
