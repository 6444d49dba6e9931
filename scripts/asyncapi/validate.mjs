// Parses an AsyncAPI document (JSON or YAML) with the official parser (@asyncapi/parser, as
// installed by scripts/asyncapi.sh) and prints one JSON line: whether it parsed, its channels
// and operations as the parser sees them, and every diagnostic. Exit code 0 when it printed.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const dir = process.env.BROOK_ASYNCAPI_NODE ?? `${process.env.HOME}/.cache/brook-ci/asyncapi-node`;
const require = createRequire(`${dir}/package.json`);
const { Parser } = require('@asyncapi/parser');

const severities = ['error', 'warning', 'info', 'hint'];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(process.argv[2], 'utf8'));
console.log(JSON.stringify({
  parsed: document !== undefined,
  version: document?.version(),
  channels: document ? document.channels().all().map((c) => c.address()) : [],
  operations: document ? document.operations().all().map((o) => ({ id: o.id(), action: o.action() })) : [],
  diagnostics: diagnostics.map((d) => ({
    severity: severities[d.severity] ?? String(d.severity),
    code: d.code,
    message: d.message,
    path: d.path.join('/'),
  })),
}));
