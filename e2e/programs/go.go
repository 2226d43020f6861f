package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	raw, err := os.ReadFile("e2e-input.txt")
	if err != nil {
		panic(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		panic(err)
	}
	line := fmt.Sprintf("e2e go %d", n*2)
	if err := os.WriteFile("e2e-go.txt", []byte(line+"\n"), 0o644); err != nil {
		panic(err)
	}
	fmt.Println(line)
}
