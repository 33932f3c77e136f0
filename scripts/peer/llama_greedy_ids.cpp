// llama.cpp's greedy continuation of a raw prompt, as ids, with the logit
// margin (top-1 minus top-2) of every choice: the reference for
// tests/llamacpp.rs. The prompt is evaluated one token at a time (as
// pdbench's single-token steps compute it), or as one batch (--batch, as
// llama-simple does). Built against a llama.cpp build by
// scripts/peer/llamacpp-fixtures.sh; prints one JSON object.
#include "llama.h"
#include <clocale>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

static int decode(llama_context *ctx, llama_batch_ext *batch, const llama_token *ids, int n, int pos0) {
    llama_batch_ext_clear(batch);
    for (int i = 0; i < n; ++i) {
        const int idx = llama_batch_ext_add_token(batch, 0, ids[i]);
        const llama_pos pos = pos0 + i;
        llama_batch_ext_set_pos(batch, idx, &pos);
    }
    llama_batch_ext_set_output_logits(batch, n - 1, true);
    return llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch);
}

static void json_string(const std::string &s) {
    putchar('"');
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    std::setlocale(LC_NUMERIC, "C");
    std::string model_path, prompt;
    int n_predict = 32, threads = 1;
    bool batch_prompt = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) n_predict = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch")) batch_prompt = true;
        else prompt = argv[i];
    }
    if (model_path.empty() || prompt.empty()) {
        fprintf(stderr, "usage: %s -m MODEL.gguf [-n N] [-t THREADS] [--batch] PROMPT\n", argv[0]);
        return 2;
    }
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model *model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) { fprintf(stderr, "error: cannot load %s\n", model_path.c_str()); return 1; }
    const llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), NULL, 0, true, true);
    std::vector<llama_token> ids(n_prompt);
    if (llama_tokenize(vocab, prompt.c_str(), prompt.size(), ids.data(), ids.size(), true, true) < 0) return 1;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_predict;
    cp.n_batch = n_prompt;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    llama_batch_ext *batch = llama_batch_ext_init(ctx);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    if (batch_prompt) {
        if (decode(ctx, batch, ids.data(), n_prompt, 0)) return 1;
    } else {
        for (int i = 0; i < n_prompt; i++)
            if (decode(ctx, batch, &ids[i], 1, i)) return 1;
    }
    std::vector<llama_token> out;
    std::vector<float> margins;
    std::vector<std::vector<std::pair<int, float>>> tops;
    for (int step = 0; step < n_predict; step++) {
        const float *logits = llama_get_logits_ith(ctx, -1);
        int best = 0;
        for (int v = 1; v < n_vocab; v++) if (logits[v] > logits[best]) best = v;
        float second = -INFINITY;
        for (int v = 0; v < n_vocab; v++) if (v != best && logits[v] > second) second = logits[v];
        out.push_back(best);
        margins.push_back(logits[best] - second);
        // The five largest logits, for comparing values as well as choices.
        std::vector<std::pair<int, float>> top;
        for (int v = 0; v < n_vocab; v++) {
            if (top.size() < 5 || logits[v] > top.back().second) {
                if (top.size() == 5) top.pop_back();
                auto at = top.begin();
                while (at != top.end() && at->second >= logits[v]) ++at;
                top.insert(at, {v, logits[v]});
            }
        }
        tops.push_back(top);
        if (step + 1 < n_predict && decode(ctx, batch, &out.back(), 1, n_prompt + step)) return 1;
    }
    printf("{\"prompt\": ");
    json_string(prompt);
    printf(", \"prompt_ids\": [");
    for (int i = 0; i < n_prompt; i++) printf(i ? ", %d" : "%d", ids[i]);
    printf("], \"prompt_eval\": \"%s\", \"ids\": [", batch_prompt ? "batch" : "one_token_at_a_time");
    for (size_t i = 0; i < out.size(); i++) printf(i ? ", %d" : "%d", out[i]);
    printf("], \"margins\": [");
    for (size_t i = 0; i < margins.size(); i++) printf(i ? ", %.5f" : "%.5f", margins[i]);
    printf("], \"top\": [");
    for (size_t i = 0; i < tops.size(); i++) {
        printf(i ? ", [" : "[");
        for (size_t j = 0; j < tops[i].size(); j++)
            printf(j ? ", [%d, %.5f]" : "[%d, %.5f]", tops[i][j].first, tops[i][j].second);
        printf("]");
    }
    printf("]}\n");
    llama_batch_ext_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
