/* test_main.c — runs every test; ends with "N passed, N failed". */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

int g_check_failed;

#define X(name) void name(void);
#include "tests.def"
#undef X

static const test_case k_tests[] = {
#define X(name) {#name, name},
#include "tests.def"
#undef X
};

int main(int argc, char **argv) {
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof k_tests / sizeof k_tests[0]; i++) {
        if (argc > 1 && !strstr(k_tests[i].name, argv[1])) continue;
        g_check_failed = 0;
        k_tests[i].fn();
        if (g_check_failed) {
            printf("FAIL  %s (%d checks failed)\n", k_tests[i].name, g_check_failed);
            failed++;
        } else {
            printf("ok    %s\n", k_tests[i].name);
            passed++;
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
