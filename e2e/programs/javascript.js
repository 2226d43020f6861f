const fs = require("fs");

const n = parseInt(fs.readFileSync("e2e-input.txt", "utf8"), 10);
const line = `e2e javascript ${n * 2}`;
fs.writeFileSync("e2e-javascript.txt", line + "\n");
console.log(line);
