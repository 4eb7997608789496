// Score a cache-tests run: how many required and optimal tests passed (`true`), as
// docs/cache.md reports them. "check" tests (behaviours the RFC leaves open) are not counted.
//
// usage: node scripts/cache-tests-score.mjs SUITE_DIR RESULTS.json [--fails]
//   --fails also lists every counted test that did not pass, with the suite's reason.
import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import path from 'node:path'

const [suiteDir, resultsFile, flag] = process.argv.slice(2)
if (!suiteDir || !resultsFile) {
  console.error('usage: cache-tests-score.mjs SUITE_DIR RESULTS.json [--fails]')
  process.exit(2)
}
const index = pathToFileURL(path.resolve(suiteDir, 'tests/index.mjs'))
const suites = (await import(index)).default
const results = JSON.parse(readFileSync(resultsFile, 'utf8'))
const score = { required: [0, 0], optimal: [0, 0] }
const fails = []
for (const suite of suites) {
  for (const test of suite.tests) {
    const kind = test.kind ?? 'required'
    // the command-line runner skips browser-only tests: they have no result
    if (!(kind in score) || !(test.id in results)) continue
    score[kind][1]++
    if (results[test.id] === true) score[kind][0]++
    else fails.push(`${kind}\t${test.id}\t${JSON.stringify(results[test.id])}`)
  }
}
if (flag === '--fails' && fails.length) console.log(fails.join('\n'))
const [r, rt] = score.required
const [o, ot] = score.optimal
console.log(`required ${r}/${rt}  optimal ${o}/${ot}  total ${r + o}/${rt + ot}`)
