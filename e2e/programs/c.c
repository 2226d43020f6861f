#include <stdio.h>

int main(void) {
    int n = 0;
    FILE *in = fopen("e2e-input.txt", "r");
    if (!in || fscanf(in, "%d", &n) != 1) return 1;
    fclose(in);
    FILE *out = fopen("e2e-c.txt", "w");
    if (!out) return 1;
    fprintf(out, "e2e c %d\n", n * 2);
    fclose(out);
    printf("e2e c %d\n", n * 2);
    return 0;
}
