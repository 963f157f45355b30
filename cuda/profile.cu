/* profile.cu — device time per category of work (common.cuh's CU_PROF
 * scopes): event pairs recorded around the outermost scope, collected and
 * summed by label; printed by cu_prof_report. Off until the caller turns
 * it on (bench_cuda, with AVERIS_CUDA_PROFILE=1). */
#include "common.cuh"

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace {
struct prof_state {
    int on = 0, depth = 0;
    struct pend { const char *label; cudaEvent_t a, b; };
    std::vector<pend> pending;
    std::map<std::string, std::pair<double, long>> total;
};
prof_state g_prof;
bool prof_on() { return g_prof.on > 0; }
void prof_collect() {
    for (auto &p : g_prof.pending) {
        float ms = 0;
        if (cudaEventSynchronize(p.b) == cudaSuccess && cudaEventElapsedTime(&ms, p.a, p.b) == cudaSuccess) {
            auto &t = g_prof.total[p.label];
            t.first += ms;
            t.second++;
        }
        cudaEventDestroy(p.a);
        cudaEventDestroy(p.b);
    }
    g_prof.pending.clear();
}
} // namespace

void cu_prof_enable(int on) { g_prof.on = on > 0; }
int cu_prof_active(void) { return prof_on(); }

cu_prof_scope::cu_prof_scope(const char *l, cudaStream_t st) : label(l), s(st) {
    if (!prof_on() || g_prof.depth++ > 0) return;
    cudaEventCreate(&a);
    cudaEventRecord(a, s);
}

cu_prof_scope::~cu_prof_scope() {
    if (!prof_on()) return;
    g_prof.depth--;
    if (!a) return;
    cudaEvent_t b;
    cudaEventCreate(&b);
    cudaEventRecord(b, s);
    g_prof.pending.push_back({label, a, b});
    if (g_prof.pending.size() > 4096) prof_collect();
}

void cu_prof_reset(void) {
    prof_collect();
    g_prof.total.clear();
}

void cu_prof_report(int steps) {
    if (!prof_on()) return;
    prof_collect();
    std::vector<std::pair<double, std::string>> rows;
    double all = 0;
    for (auto &t : g_prof.total) {
        rows.push_back({t.second.first / steps, t.first});
        all += t.second.first / steps;
    }
    std::sort(rows.rbegin(), rows.rend());
    for (auto &r : rows) printf("    %-28s %8.2f ms  %5.1f%%\n", r.second.c_str(), r.first, 100 * r.first / all);
    printf("    %-28s %8.2f ms\n", "(profiled total)", all);
    g_prof.total.clear();
}
