#!/usr/bin/env node
// Summarises one leg of a conformance run against its baseline.
//
//   node summary.mjs OUT_DIR BASELINE.yml              # one line: scenarios passed / baselined
//   node summary.mjs --markdown OUT_DIR BASELINE.yml   # a table: scenario → result (reason)
//
// OUT_DIR holds the suite's `server-<scenario>-<time>/checks.json` (its `-o`).
// A scenario fails when a check is FAILURE or WARNING (as the suite's baseline
// evaluation counts it). Baseline entries are `scenario` or `scenario:check-id`
// under `server:`; the comment block right above a group of entries is their
// reason. No dependencies.
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

const args = process.argv.slice(2);
const markdown = args[0] === '--markdown';
if (markdown) args.shift();
const [outDir, baselinePath] = args;
if (!outDir || !baselinePath) {
  console.error('usage: node summary.mjs [--markdown] OUT_DIR BASELINE.yml');
  process.exit(2);
}
const leg = outDir.replace(/\/$/, '').split('/').pop();

// ---------------------------------------------------------------- baseline
const whole = new Map(); // scenario -> reason
const byCheck = new Map(); // scenario -> Map(check -> reason)
{
  let comment = [];
  let previousWasEntry = false;
  for (const raw of readFileSync(baselinePath, 'utf8').split('\n')) {
    const line = raw.trim();
    const entry = /^-\s+(\S+)\s*$/.exec(line);
    if (line.startsWith('#')) {
      if (previousWasEntry) comment = [];
      comment.push(line.replace(/^#\s?/, ''));
      previousWasEntry = false;
    } else if (entry) {
      const reason = comment.join(' ').trim();
      const [scenario, check] = entry[1].split(':');
      if (check) {
        if (!byCheck.has(scenario)) byCheck.set(scenario, new Map());
        byCheck.get(scenario).set(check, reason);
      } else {
        whole.set(scenario, reason);
      }
      previousWasEntry = true;
    } else {
      // A blank line after entries, or any other line (`server:`), ends a reason.
      if (line !== '' || previousWasEntry) comment = [];
      previousWasEntry = false;
    }
  }
}

// ---------------------------------------------------------------- results
const failing = (status) => status === 'FAILURE' || status === 'WARNING';
const scenarios = [];
for (const dir of existsSync(outDir) ? readdirSync(outDir).sort() : []) {
  const match = /^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$/.exec(dir);
  const file = join(outDir, dir, 'checks.json');
  if (!match || !existsSync(file)) continue;
  const checks = JSON.parse(readFileSync(file, 'utf8'));
  const failed = [...new Set(checks.filter((c) => failing(c.status)).map((c) => c.id))];
  // Only SKIPPED (and INFO) checks: the suite did not exercise the scenario.
  const skipped =
    checks.some((c) => c.status === 'SKIPPED') && checks.every((c) => c.status === 'SKIPPED' || c.status === 'INFO');
  scenarios.push({ name: match[1], failed, skipped });
}

let passed = 0;
let baselined = 0;
let partly = 0;
let unexpected = 0;
let skipped = 0;
const rows = [];
for (const s of scenarios) {
  const checks = byCheck.get(s.name);
  if (s.skipped) {
    skipped++;
    rows.push([s.name, 'skipped by the suite', '']);
  } else if (s.failed.length === 0) {
    passed++;
    rows.push([s.name, 'pass', '']);
  } else if (whole.has(s.name)) {
    baselined++;
    rows.push([s.name, 'expected failure', whole.get(s.name)]);
  } else if (checks && s.failed.every((id) => checks.has(id))) {
    partly++;
    const reasons = [...new Set(s.failed.map((id) => checks.get(id)))];
    const ids = s.failed.map((id) => `\`${id}\``).join(', ');
    rows.push([s.name, `pass, but for the expected failure of ${ids}`, reasons.join(' / ')]);
  } else {
    unexpected++;
    rows.push([s.name, `**FAILS**: ${s.failed.map((id) => `\`${id}\``).join(', ')}`, 'not in the baseline']);
  }
}

if (markdown) {
  // Passes first, then by reason, so that a group's reason is printed once.
  const rank = (result) => (result === 'pass' ? 0 : result.startsWith('pass') ? 1 : 2);
  rows.sort((a, b) => rank(a[1]) - rank(b[1]) || a[2].localeCompare(b[2]) || a[0].localeCompare(b[0]));
  console.log('| scenario | result | reason |');
  console.log('| --- | --- | --- |');
  let previous = '';
  for (const [name, result, reason] of rows) {
    const shown = reason && reason === previous ? '(same)' : reason.replaceAll('|', '\\|');
    previous = reason;
    console.log(`| \`${name}\` | ${result} | ${shown} |`);
  }
} else {
  const parts = [`${passed} pass`, `${baselined} expected failures`];
  if (partly) parts.push(`${partly} pass but for baselined checks`);
  if (skipped) parts.push(`${skipped} skipped by the suite`);
  if (unexpected) parts.push(`${unexpected} FAIL unexpectedly`);
  console.log(`${leg}: ${scenarios.length} scenarios: ${parts.join(', ')}`);
}
