// bm-logits: the one driver a GGUF runtime image builds against libllama (docker/gguf-*.Dockerfile.j2).
//
//   bm-logits MODEL.gguf TOKENS.txt OUT.f32 N_CTX N_THREADS N_GPU_LAYERS
//
// TOKENS.txt: one prompt per line, token ids separated by spaces. For every prompt the context is cleared,
// the prompt is decoded as one batch with logits for every position, and the logits (float32, row-major
// [positions, n_vocab]) are appended to OUT.f32. stdout ends with one line "bm-logits ok n_vocab=V rows=R
// devices=..." that the node parses; any failure exits non-zero with the reason on stderr.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: bm-logits MODEL.gguf TOKENS.txt OUT.f32 N_CTX N_THREADS N_GPU_LAYERS\n");
        return 2;
    }
    const int n_ctx = atoi(argv[4]), n_threads = atoi(argv[5]), n_gpu_layers = atoi(argv[6]);
    llama_log_set(quiet, nullptr);
    llama_backend_init();

    std::vector<std::vector<llama_token>> prompts;
    std::ifstream in(argv[2]);
    if (!in) { fprintf(stderr, "bm-logits: cannot read %s\n", argv[2]); return 1; }
    for (std::string line; std::getline(in, line);) {
        std::istringstream ss(line);
        std::vector<llama_token> toks;
        for (long t; ss >> t;) toks.push_back((llama_token) t);
        if (!toks.empty()) prompts.push_back(toks);
    }
    if (prompts.empty()) { fprintf(stderr, "bm-logits: %s holds no prompt\n", argv[2]); return 1; }

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = n_gpu_layers;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "bm-logits: cannot load %s\n", argv[1]); return 1; }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_ubatch = n_ctx;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "bm-logits: cannot create a context (n_ctx %d)\n", n_ctx); return 1; }

    FILE * out = fopen(argv[3], "wb");
    if (!out) { fprintf(stderr, "bm-logits: cannot write %s\n", argv[3]); return 1; }
    long rows = 0;
    for (const auto & toks : prompts) {
        if ((int) toks.size() > n_ctx) {
            fprintf(stderr, "bm-logits: a prompt of %zu tokens exceeds n_ctx %d\n", toks.size(), n_ctx);
            return 1;
        }
        llama_memory_clear(llama_get_memory(ctx), true);
        llama_batch batch = llama_batch_init((int) toks.size(), 0, 1);
        for (size_t i = 0; i < toks.size(); ++i) {
            batch.token[i] = toks[i];
            batch.pos[i] = (llama_pos) i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        batch.n_tokens = (int) toks.size();
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "bm-logits: llama_decode failed\n"); return 1; }
        for (size_t i = 0; i < toks.size(); ++i) {
            const float * row = llama_get_logits_ith(ctx, (int) i);
            if (!row || fwrite(row, sizeof(float), n_vocab, out) != (size_t) n_vocab) {
                fprintf(stderr, "bm-logits: no logits for position %zu\n", i);
                return 1;
            }
            ++rows;
        }
        llama_batch_free(batch);
    }
    fclose(out);
    std::string devices;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        devices += (devices.empty() ? "" : ",") + std::string(ggml_backend_dev_name(d)) + ":" +
                   ggml_backend_dev_description(d);
    }
    for (char & c : devices) if (c == ' ') c = '_';
    printf("bm-logits ok n_vocab=%d rows=%ld devices=%s\n", n_vocab, rows, devices.c_str());
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
