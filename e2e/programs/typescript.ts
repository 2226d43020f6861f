import { readFileSync, writeFileSync } from "node:fs";

const n: number = parseInt(readFileSync("e2e-input.txt", "utf8"), 10);
const line: string = `e2e typescript ${n * 2}`;
writeFileSync("e2e-typescript.txt", line + "\n");
console.log(line);
