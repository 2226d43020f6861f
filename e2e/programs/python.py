from pathlib import Path

n = int(Path("e2e-input.txt").read_text())
line = f"e2e python {n * 2}"
Path("e2e-python.txt").write_text(line + "\n")
print(line)
