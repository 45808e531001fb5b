#!/usr/bin/env node
// The peer of tests/test_cli_hf.cpp: Hugging Face's JavaScript client
// (@huggingface/transformers, from the npm registry; tests/hf/run.sh installs it) reads
// the files bd3 writes, offline, and must agree with bd3.
//
//   node tests/hf/hf_peer.cjs CASES.json
//
// CASES.json: {"root": DIR,
//   "tokenizers": [{"name": SUBDIR, "cases": [{"text": S, "ids": [..]}, ...]}, ...],
//   "configs": [{"name": SUBDIR, "expect": {"key": value, ...}}, ...]}
// Every SUBDIR is under DIR. For each tokenizer, AutoTokenizer must encode every text (no
// special tokens added) to bd3's ids and decode those ids back to the text; for each
// config, AutoConfig must read the key/values. One line per disagreement on stderr; exit 1
// when there is one, 2 for bad usage or a client that is not installed.
'use strict';
const fs = require('fs');
const path = require('path');

function usage(message) {
  process.stderr.write(`hf_peer: ${message}\n`);
  process.exit(2);
}

if (process.argv.length !== 3) usage('expected CASES.json');
let hf;
try {
  hf = require(path.join(__dirname, 'node_modules', '@huggingface', 'transformers'));
} catch (e) {
  usage(`@huggingface/transformers is not installed (tests/hf/run.sh installs it): ${e.message}`);
}
const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
hf.env.allowRemoteModels = false;  // never the Hub: only the files bd3 wrote
hf.env.allowLocalModels = true;
hf.env.localModelPath = spec.root;

const show = (x) => JSON.stringify(x).slice(0, 200);
let failures = 0;
function fail(message) {
  failures++;
  if (failures <= 20) process.stderr.write(`hf_peer: ${message}\n`);
}

(async () => {
  const summary = { tokenizers: {}, configs: {} };
  for (const t of spec.tokenizers) {
    const tok = await hf.AutoTokenizer.from_pretrained(t.name);
    let ids_checked = 0;
    for (const c of t.cases) {
      const ids = Array.from(tok.encode(c.text, { add_special_tokens: false }));
      if (ids.length !== c.ids.length || ids.some((id, i) => id !== c.ids[i]))
        fail(`${t.name}: ${show(c.text)} encodes to ${show(ids)}, bd3: ${show(c.ids)}`);
      // The client's decode refuses an empty list; no ids are the empty text.
      const text = c.ids.length === 0 ? ''
        : tok.decode(c.ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
      if (text !== c.text) fail(`${t.name}: ${show(c.ids)} decodes to ${show(text)}, not ${show(c.text)}`);
      ids_checked += c.ids.length;
    }
    summary.tokenizers[t.name] = { cases: t.cases.length, ids: ids_checked };
  }
  for (const c of spec.configs) {
    const cfg = await hf.AutoConfig.from_pretrained(c.name);
    for (const [key, value] of Object.entries(c.expect))
      if (JSON.stringify(cfg[key]) !== JSON.stringify(value))
        fail(`${c.name}/config.json: ${key} reads as ${show(cfg[key])}, bd3 wrote ${show(value)}`);
    summary.configs[c.name] = Object.keys(c.expect).length;
  }
  summary.failures = failures;
  summary.client = `@huggingface/transformers ${hf.env.version}`;
  process.stdout.write(JSON.stringify(summary) + '\n');
  process.exit(failures ? 1 : 0);
})().catch((e) => {
  process.stderr.write(`hf_peer: ${e.stack || e}\n`);
  process.exit(1);
});
