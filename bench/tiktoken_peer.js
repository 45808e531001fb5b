#!/usr/bin/env node
// The peer of bench_tokenizer: tiktoken's GPT-2 encoding (the npm package "tiktoken",
// OpenAI's Rust tokenizer compiled to WebAssembly) on the same text, timed the same way
// (whole text, one thread, encode_ordinary = special tokens as ordinary text).
//
//   npm install --prefix bench/tiktoken tiktoken
//   node bench/tiktoken_peer.js [corpus] [--ours ids.json] [--reps N]
//
// corpus defaults to $BD3_CORPUS or /tmp/bd3_corpus/kjv.txt. With --ours (the output of
// `bd3 tokenize --vocab ... --merges ... --file corpus`), the ids are compared with ours
// and the script exits 1 on the first difference. The corpus must be valid UTF-8
// (JavaScript strings cannot hold other bytes).
'use strict';
const fs = require('fs');
const path = require('path');

function usage(message) {
  process.stderr.write(`tiktoken_peer: ${message}\n`);
  process.exit(2);
}

let corpus = process.env.BD3_CORPUS || '/tmp/bd3_corpus/kjv.txt';
let ours = null;
let reps = 5;
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--ours') ours = args[++i];
  else if (args[i] === '--reps') reps = Number(args[++i]);
  else if (args[i].startsWith('--')) usage(`unknown flag ${args[i]}`);
  else corpus = args[i];
}
if (!Number.isInteger(reps) || reps < 1) usage('--reps must be a positive integer');

let tiktoken;
try {
  tiktoken = require(path.join(__dirname, 'tiktoken', 'node_modules', 'tiktoken'));
} catch (e) {
  usage('tiktoken is not installed: npm install --prefix bench/tiktoken tiktoken');
}

const bytes = fs.readFileSync(corpus);
const text = bytes.toString('utf8');
if (Buffer.byteLength(text, 'utf8') !== bytes.length) usage(`${corpus} is not valid UTF-8`);

const enc = tiktoken.get_encoding('gpt2');
// Wall-clock and CPU time per run (CPU time is steadier on a busy machine).
const times = [];
const cpu_times = [];
let ids = null;
for (let r = 0; r < reps; r++) {
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  ids = enc.encode_ordinary(text);
  times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  const c = process.cpuUsage(c0);
  cpu_times.push((c.user + c.system) / 1e6);
}
times.sort((a, b) => a - b);
cpu_times.sort((a, b) => a - b);
const mbps = (s) => bytes.length / s / 1e6;
const summary = {
  peer: 'tiktoken ' + require(path.join(__dirname, 'tiktoken', 'node_modules', 'tiktoken',
                                        'package.json')).version + ' (gpt2, node ' +
        process.version + ')',
  corpus,
  bytes: bytes.length,
  tokens: ids.length,
  reps,
  best_mb_per_s: Number(mbps(times[0]).toFixed(2)),
  median_mb_per_s: Number(mbps(times[Math.floor(times.length / 2)]).toFixed(2)),
  best_cpu_mb_per_s: Number(mbps(cpu_times[0]).toFixed(2)),
};

if (ours !== null) {
  const mine = JSON.parse(fs.readFileSync(ours, 'utf8'));
  let mismatch = -1;
  const n = Math.max(mine.length, ids.length);
  for (let i = 0; i < n; i++) {
    if (mine[i] !== ids[i]) {
      mismatch = i;
      break;
    }
  }
  summary.ours_tokens = mine.length;
  summary.identical_ids = mismatch < 0;
  if (mismatch >= 0) {
    summary.first_mismatch = {index: mismatch, ours: mine[mismatch], tiktoken: ids[mismatch]};
    console.log(JSON.stringify(summary));
    enc.free();
    process.exit(1);
  }
}
enc.free();
console.log(JSON.stringify(summary));
