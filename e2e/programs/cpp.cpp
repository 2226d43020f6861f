#include <fstream>
#include <iostream>

int main() {
    int n = 0;
    std::ifstream in("e2e-input.txt");
    if (!(in >> n)) return 1;
    const std::string line = "e2e cpp " + std::to_string(n * 2);
    std::ofstream("e2e-cpp.txt") << line << '\n';
    std::cout << line << '\n';
}
