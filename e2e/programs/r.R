n <- as.integer(readLines("e2e-input.txt"))
line <- sprintf("e2e r %d", n * 2L)
writeLines(line, "e2e-r.txt")
cat(line, "\n", sep = "")
