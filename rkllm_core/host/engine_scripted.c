/* The scripted engine: deterministic replies chosen by rules written in a text model file.
 *
 * The format is documented in docs/host-runtime.md. Tokens are word pieces (a word with its
 * leading space) or single bytes, so non-ASCII characters span several tokens and exercise
 * RKLLM_RUN_WAITING. Hidden states are per-word pseudo-random vectors, so texts that share
 * words are closer than texts that do not. */
#define _GNU_SOURCE
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "host_internal.h"

enum { C_CONTAINS, C_EQUALS, C_STARTSWITH, C_ROLE, C_INPUT, C_LORA, C_REMEMBERS, C_THINKING, C_TOOLS };

typedef struct {
    int kind;
    char *arg;
} cond;

typedef struct {
    cond conds[8];
    int nconds;
    char *reply;
    char *think;
} rule;

typedef struct {
    int32_t id;
    char *piece;
} slot;

typedef struct {
    ivec plan;
    int pos;
    float *hidden;
    int hidden_n;
    float *logits;
} seq_state;

struct host_engine {
    int vocab, hidden, eos;
    rule *rules;
    int nrules;
    rule deflt;
    slot *table; /* id -> piece, open addressing */
    int table_cap, table_n;
    pthread_mutex_t mu;
    seq_state seq[HOST_MAX_BATCH];
};

/* ---------- the piece vocabulary ---------- */

static void table_put(host_engine *e, int32_t id, const char *p, size_t n) {
    if (e->table_n * 2 >= e->table_cap) {
        int cap = e->table_cap ? e->table_cap * 2 : 1024;
        slot *t = calloc((size_t)cap, sizeof *t);
        for (int i = 0; i < e->table_cap; i++)
            if (e->table[i].piece) {
                int j = (int)((uint32_t)e->table[i].id % (uint32_t)cap);
                while (t[j].piece) j = (j + 1) % cap;
                t[j] = e->table[i];
            }
        free(e->table);
        e->table = t;
        e->table_cap = cap;
    }
    int j = (int)((uint32_t)id % (uint32_t)e->table_cap);
    while (e->table[j].piece) {
        if (e->table[j].id == id) return; /* first piece wins on a hash collision */
        j = (j + 1) % e->table_cap;
    }
    e->table[j].id = id;
    e->table[j].piece = strndup(p, n);
    e->table_n++;
}

static const char *table_get(host_engine *e, int32_t id) {
    if (!e->table_cap) return NULL;
    int j = (int)((uint32_t)id % (uint32_t)e->table_cap);
    while (e->table[j].piece) {
        if (e->table[j].id == id) return e->table[j].piece;
        j = (j + 1) % e->table_cap;
    }
    return NULL;
}

static int is_word(unsigned char ch) { return ch < 0x80 && (isalnum(ch) || ch == '_'); }

static int sc_tokenize(host_engine *e, const char *s, size_t n, int special, ivec *out) {
    (void)special;
    size_t i = 0;
    pthread_mutex_lock(&e->mu);
    while (i < n) {
        unsigned char ch = (unsigned char)s[i];
        size_t start = i;
        if (ch == ' ' && i + 1 < n && is_word((unsigned char)s[i + 1])) i++;
        if (is_word((unsigned char)s[i])) {
            while (i < n && is_word((unsigned char)s[i])) i++;
        } else {
            i++;
        }
        size_t len = i - start;
        if (len == 1) {
            ivec_push(out, (unsigned char)s[start]);
        } else {
            int32_t id = 256 + (int32_t)(host_hash(s + start, len) % (uint64_t)(e->vocab - 264));
            table_put(e, id, s + start, len);
            ivec_push(out, id);
        }
    }
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static int sc_token_bytes(host_engine *e, int32_t tok, int skip_special, char *buf, int cap) {
    if (tok == e->eos) {
        if (skip_special) return 0;
        snprintf(buf, (size_t)cap, "</s>");
        return (int)strlen(buf);
    }
    if (tok <= 0) return 0;
    if (tok < 256) {
        buf[0] = (char)tok;
        return 1;
    }
    pthread_mutex_lock(&e->mu);
    const char *p = table_get(e, tok);
    int n = snprintf(buf, (size_t)cap, "%s", p ? p : "<unk>");
    pthread_mutex_unlock(&e->mu);
    return n < cap ? n : cap - 1;
}

/* ---------- the model file ---------- */

typedef struct {
    const char *p;
    int line;
    char err[256];
} lexer;

/* Next token of a line: a quoted string (escapes \n \t \" \\ \uXXXX), "=", or a bare word. */
static char *lex(lexer *lx) {
    while (*lx->p == ' ' || *lx->p == '\t' || *lx->p == '\r') lx->p++;
    if (!*lx->p || *lx->p == '\n') return NULL;
    strbuf b = {0};
    if (*lx->p == '"') {
        lx->p++;
        while (*lx->p && *lx->p != '"' && *lx->p != '\n') {
            char ch = *lx->p++;
            if (ch == '\\' && *lx->p) {
                char esc = *lx->p++;
                if (esc == 'n') ch = '\n';
                else if (esc == 't') ch = '\t';
                else if (esc == 'u') {
                    unsigned cp = 0;
                    for (int k = 0; k < 4 && isxdigit((unsigned char)*lx->p); k++, lx->p++)
                        cp = cp * 16 + (unsigned)(isdigit((unsigned char)*lx->p) ? *lx->p - '0' : (tolower((unsigned char)*lx->p) - 'a' + 10));
                    char u[4];
                    int un = 0;
                    if (cp < 0x80) u[un++] = (char)cp;
                    else if (cp < 0x800) { u[un++] = (char)(0xC0 | (cp >> 6)); u[un++] = (char)(0x80 | (cp & 0x3F)); }
                    else { u[un++] = (char)(0xE0 | (cp >> 12)); u[un++] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[un++] = (char)(0x80 | (cp & 0x3F)); }
                    sb_add(&b, u, (size_t)un);
                    continue;
                } else ch = esc;
            }
            sb_add(&b, &ch, 1);
        }
        if (*lx->p != '"') {
            snprintf(lx->err, sizeof lx->err, "line %d: unterminated string", lx->line);
            sb_free(&b);
            return NULL;
        }
        lx->p++;
        if (!b.s) sb_adds(&b, "");
        return b.s;
    }
    if (*lx->p == '=') {
        lx->p++;
        return strdup("=");
    }
    while (*lx->p && !strchr(" \t\r\n\"=", *lx->p)) sb_add(&b, lx->p++, 1);
    return b.s;
}

static int parse_rule(host_engine *e, lexer *lx, rule *r, int is_default) {
    char *w;
    while ((w = lex(lx))) {
        static const char *kinds[] = {"contains", "equals", "startswith", "role", "input",
                                      "lora", "remembers", "thinking", "tools"};
        int kind = -1;
        for (int k = 0; k < 9; k++)
            if (strcmp(w, kinds[k]) == 0) kind = k;
        if (strcmp(w, "reply") == 0 || strcmp(w, "think") == 0) {
            char *v = lex(lx);
            if (!v) {
                snprintf(lx->err, sizeof lx->err, "line %d: %s needs a quoted text", lx->line, w);
                free(w);
                return -1;
            }
            if (w[0] == 'r') r->reply = v;
            else r->think = v;
        } else if (kind >= 0 && !is_default && r->nconds < 8) {
            char *v = lex(lx);
            if (!v) {
                snprintf(lx->err, sizeof lx->err, "line %d: %s needs a value", lx->line, w);
                free(w);
                return -1;
            }
            r->conds[r->nconds].kind = kind;
            r->conds[r->nconds++].arg = v;
        } else {
            snprintf(lx->err, sizeof lx->err, "line %d: unexpected \"%s\"", lx->line, w);
            free(w);
            return -1;
        }
        free(w);
    }
    if (lx->err[0]) return -1;
    if (!r->reply) {
        snprintf(lx->err, sizeof lx->err, "line %d: a rule needs reply \"...\"", lx->line);
        return -1;
    }
    (void)e;
    return 0;
}

static int yes(const char *v) { return strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 || strcmp(v, "1") == 0; }

static void set_str(char **dst, const char *v) {
    free(*dst);
    *dst = strdup(v);
}

static int apply_setting(host_engine *e, host_model_config *cfg, const char *key, const char *v,
                         const char *v2, lexer *lx) {
    (void)e;
    if (!strcmp(key, "max_context_limit")) cfg->max_context_limit = atoi(v);
    else if (!strcmp(key, "vocab_size")) cfg->vocab_size = atoi(v);
    else if (!strcmp(key, "hidden_size")) cfg->hidden_size = atoi(v);
    else if (!strcmp(key, "prefill_tokens_per_second")) cfg->prefill_tps = atof(v);
    else if (!strcmp(key, "decode_tokens_per_second")) cfg->decode_tps = atof(v);
    else if (!strcmp(key, "callback_thread")) cfg->runtime_thread = strcmp(v, "runtime") == 0;
    else if (!strcmp(key, "chat_template")) cfg->has_template = strcmp(v, "none") != 0;
    else if (!strcmp(key, "system_prompt")) set_str(&cfg->system_prompt, v);
    else if (!strcmp(key, "system_format")) set_str(&cfg->system_format, v);
    else if (!strcmp(key, "prompt_prefix")) set_str(&cfg->prompt_prefix, v);
    else if (!strcmp(key, "prompt_postfix")) set_str(&cfg->prompt_postfix, v);
    else if (!strcmp(key, "think_off")) set_str(&cfg->think_off, v);
    else if (!strcmp(key, "thinking")) cfg->supports_thinking = yes(v);
    else if (!strcmp(key, "fail_init")) set_str(&cfg->fail_init, v);
    else if (!strcmp(key, "error_after_tokens")) cfg->error_after_tokens = atoi(v);
    else if (!strcmp(key, "hang_after_tokens")) cfg->hang_after_tokens = atoi(v);
    else if (!strcmp(key, "crash_after_tokens")) cfg->crash_after_tokens = atoi(v);
    else if (!strcmp(key, "crash_on")) set_str(&cfg->crash_on, v);
    else if (!strcmp(key, "slow_token")) {
        cfg->slow_token_index = atoi(v);
        cfg->slow_token_ms = v2 ? atoi(v2) : 1000;
    } else if (!strcmp(key, "needs_tokenizer_callback")) cfg->needs_tokenizer_callback = yes(v);
    else if (!strcmp(key, "platform")) set_str(&cfg->platform, v);
    else if (!strcmp(key, "toolkit_version")) set_str(&cfg->toolkit_version, v);
    else if (!strcmp(key, "dtype")) set_str(&cfg->dtype, v);
    else {
        snprintf(lx->err, sizeof lx->err, "line %d: unknown setting \"%s\"", lx->line, key);
        return -1;
    }
    return 0;
}

static void rule_free(rule *r) {
    for (int i = 0; i < r->nconds; i++) free(r->conds[i].arg);
    free(r->reply);
    free(r->think);
}

static void sc_destroy(host_engine *e) {
    if (!e) return;
    for (int i = 0; i < e->nrules; i++) rule_free(&e->rules[i]);
    free(e->rules);
    rule_free(&e->deflt);
    for (int i = 0; i < e->table_cap; i++) free(e->table[i].piece);
    free(e->table);
    for (int i = 0; i < HOST_MAX_BATCH; i++) {
        ivec_free(&e->seq[i].plan);
        free(e->seq[i].hidden);
        free(e->seq[i].logits);
    }
    pthread_mutex_destroy(&e->mu);
    free(e);
}

static int sc_load(host_engine **out, const char *path, host_model_config *cfg, char *err,
                   size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    size_t got = fread(text, 1, (size_t)size, f);
    text[got] = 0;
    fclose(f);
    host_engine *e = calloc(1, sizeof *e);
    pthread_mutex_init(&e->mu, NULL);
    lexer lx = {text, 0, ""};
    int rc = 0;
    for (char *line = text; line && *line && rc == 0;) {
        char *nl = strchr(line, '\n');
        lx.line++;
        lx.p = line;
        while (*lx.p == ' ' || *lx.p == '\t') lx.p++;
        if (lx.line == 1) {
            if (strncmp(lx.p, "RKLLM-SCRIPTED 1", 16) != 0) {
                snprintf(lx.err, sizeof lx.err, "line 1 must be \"RKLLM-SCRIPTED 1\"");
                rc = -1;
            }
        } else if (*lx.p && *lx.p != '#' && *lx.p != '\n' && *lx.p != '\r') {
            char *w = lex(&lx);
            if (!w) {
                rc = -1;
            } else if (!strcmp(w, "when") || !strcmp(w, "default")) {
                int is_default = w[0] == 'd';
                rule r = {0};
                if (parse_rule(e, &lx, &r, is_default) != 0) {
                    rule_free(&r);
                    rc = -1;
                } else if (is_default) {
                    rule_free(&e->deflt);
                    e->deflt = r;
                } else {
                    e->rules = realloc(e->rules, sizeof(rule) * (size_t)(e->nrules + 1));
                    e->rules[e->nrules++] = r;
                }
            } else {
                char *eq = lex(&lx);
                char *v = eq && !strcmp(eq, "=") ? lex(&lx) : NULL;
                char *v2 = v ? lex(&lx) : NULL;
                if (!v) {
                    if (!lx.err[0])
                        snprintf(lx.err, sizeof lx.err, "line %d: expected \"%s = value\"", lx.line, w);
                    rc = -1;
                } else {
                    rc = apply_setting(e, cfg, w, v, v2, &lx);
                }
                free(eq);
                free(v);
                free(v2);
            }
            free(w);
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    if (rc == 0 && (cfg->vocab_size < 512 || cfg->hidden_size < 1 || cfg->max_context_limit < 16)) {
        snprintf(lx.err, sizeof lx.err, "vocab_size must be >= 512, hidden_size >= 1, "
                                        "max_context_limit >= 16");
        rc = -1;
    }
    if (rc != 0) {
        snprintf(err, errlen, "invalid scripted model %s: %s", path, lx.err[0] ? lx.err : "parse error");
        sc_destroy(e);
        return -1;
    }
    if (!e->deflt.reply) e->deflt.reply = strdup("OK.");
    e->vocab = cfg->vocab_size;
    e->hidden = cfg->hidden_size;
    e->eos = cfg->vocab_size - 1;
    *out = e;
    return 0;
}

/* ---------- runs ---------- */

static int ci_contains(const char *hay, const char *needle) { return hay && strcasestr(hay, needle) != NULL; }

static int matches(const rule *r, const host_run_info *in) {
    static const char *inputs[] = {"prompt", "token", "embed", "multimodal"};
    for (int i = 0; i < r->nconds; i++) {
        const char *a = r->conds[i].arg;
        int ok = 0;
        switch (r->conds[i].kind) {
        case C_CONTAINS: ok = ci_contains(in->input_text, a); break;
        case C_EQUALS: ok = in->input_text && strcasecmp(in->input_text, a) == 0; break;
        case C_STARTSWITH: ok = in->input_text && strncasecmp(in->input_text, a, strlen(a)) == 0; break;
        case C_ROLE: ok = in->role && strcmp(in->role, a) == 0; break;
        case C_INPUT: ok = in->input_type >= 0 && in->input_type < 4 && strcmp(inputs[in->input_type], a) == 0; break;
        case C_LORA: ok = in->lora_name ? strcmp(in->lora_name, a) == 0 : strcmp(a, "none") == 0; break;
        case C_REMEMBERS: ok = ci_contains(in->history_text, a); break;
        case C_THINKING: ok = (in->enable_thinking != 0) == yes(a); break;
        case C_TOOLS: ok = (in->tools_set != 0) == yes(a); break;
        }
        if (!ok) return 0;
    }
    return 1;
}

static void word_vector(const char *piece, int dim, float *out, float weight) {
    char norm[128];
    size_t n = 0;
    for (const char *p = piece; *p && n < sizeof norm - 1; p++)
        if (*p != ' ') norm[n++] = (char)tolower((unsigned char)*p);
    norm[n] = 0;
    uint64_t x = host_hash(norm, n) | 1;
    for (int d = 0; d < dim; d++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out[d] = weight * ((float)(x % 20001) / 10000.0f - 1.0f);
    }
}

static int sc_prefill(host_engine *e, int seq, const int32_t *tokens, int n, int n_cached,
                      const host_run_info *info, char *err, size_t errlen) {
    (void)err;
    (void)errlen;
    seq_state *s = &e->seq[seq];
    const rule *chosen = &e->deflt;
    for (int i = 0; i < e->nrules; i++)
        if (matches(&e->rules[i], info)) {
            chosen = &e->rules[i];
            break;
        }
    strbuf text = {0};
    if (chosen->think && info->enable_thinking) {
        sb_adds(&text, "<think>\n");
        sb_adds(&text, chosen->think);
        sb_adds(&text, "\n</think>\n\n");
    }
    for (const char *p = chosen->reply; *p;) { /* {input} echoes the input */
        const char *hole = strstr(p, "{input}");
        if (!hole) {
            sb_adds(&text, p);
            break;
        }
        sb_add(&text, p, (size_t)(hole - p));
        sb_adds(&text, info->input_text ? info->input_text : "");
        p = hole + 7;
    }
    s->plan.n = 0;
    s->pos = 0;
    if (text.s) sc_tokenize(e, text.s, text.n, 0, &s->plan);
    sb_free(&text);
    if (info->mode == 1) {
        int m = n - n_cached;
        free(s->hidden);
        s->hidden = calloc((size_t)(m > 0 ? m : 1) * (size_t)e->hidden, sizeof(float));
        s->hidden_n = m;
        char piece[256];
        for (int i = 0; i < m; i++) {
            int32_t t = tokens[n_cached + i];
            float *row = s->hidden + (size_t)i * (size_t)e->hidden;
            if (t < 0 && info->embed) {
                int k = info->n_embed - (n - n_cached - i);
                if (k >= 0) memcpy(row, info->embed + (size_t)k * (size_t)e->hidden, sizeof(float) * (size_t)e->hidden);
                continue;
            }
            int len = sc_token_bytes(e, t, 1, piece, sizeof piece);
            piece[len] = 0;
            int wordy = 0;
            for (int k = 0; k < len; k++) wordy |= is_word((unsigned char)piece[k]);
            word_vector(piece, e->hidden, row, wordy ? 1.0f : 0.05f);
        }
    }
    if (info->mode == 2) {
        free(s->logits);
        s->logits = malloc(sizeof(float) * (size_t)e->vocab);
        for (int i = 0; i < e->vocab; i++)
            s->logits[i] = (float)(host_hash((const char *)&i, sizeof i) % 1000) / 1000.0f - 0.5f;
        s->logits[s->plan.n ? s->plan.v[0] : e->eos] = 10.0f;
    }
    return 0;
}

static int sc_next(host_engine *e, int seq, const host_sampling *smp, int ignore_eos, int32_t *tok) {
    (void)smp;
    seq_state *s = &e->seq[seq];
    if (s->pos >= s->plan.n) {
        if (!ignore_eos || s->plan.n == 0) return 1;
        s->pos = 0; /* with EOS ignored, the reply starts over */
    }
    *tok = s->plan.v[s->pos++];
    return 0;
}

static int sc_accept(host_engine *e, int seq, int32_t tok) {
    (void)e;
    (void)seq;
    (void)tok;
    return 0;
}

static int sc_kv_remove(host_engine *e, int seq, int start, int end) {
    (void)e;
    (void)seq;
    (void)start;
    (void)end;
    return 0;
}

static int sc_hidden(host_engine *e, int seq, const float **out, int *n, int *dim) {
    seq_state *s = &e->seq[seq];
    if (!s->hidden) return -1;
    *out = s->hidden;
    *n = s->hidden_n;
    *dim = e->hidden;
    return 0;
}

static int sc_logits(host_engine *e, int seq, const float **out, int *vocab) {
    seq_state *s = &e->seq[seq];
    if (!s->logits) return -1;
    *out = s->logits;
    *vocab = e->vocab;
    return 0;
}

static int sc_load_lora(host_engine *e, const char *path, const char *name, float scale, char *err,
                        size_t errlen) {
    (void)e;
    (void)path;
    (void)name;
    (void)scale;
    (void)err;
    (void)errlen;
    return 0; /* rules select on the adapter's name: `when lora NAME` */
}

const host_engine_ops scripted_engine_ops = {
    .name = "scripted",
    .load = sc_load,
    .destroy = sc_destroy,
    .tokenize = sc_tokenize,
    .token_bytes = sc_token_bytes,
    .prefill = sc_prefill,
    .next_token = sc_next,
    .accept = sc_accept,
    .kv_remove = sc_kv_remove,
    .hidden = sc_hidden,
    .logits = sc_logits,
    .load_lora = sc_load_lora,
};
