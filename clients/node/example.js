#!/usr/bin/env node
// bertd from Node.js: @grpc/grpc-js, with the contract loaded from proto/ by @grpc/proto-loader
// (no generated files). A unary Encode, a unary Classify, and a bulk encode streamed through
// EncodeStream with its order kept.
//
//   npm ci --prefix clients/node
//   node clients/node/example.js --addr 127.0.0.1:50051 [--ca ca.crt --api-key KEY]
//
// It prints one JSON object: the vectors, the labels, and what the stream returned.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.resolve(__dirname, '..', '..', 'proto');
// Inputs per stream message: a few dozen amortise the per-message cost.
const BATCH = 32;

function load() {
  const definition = protoLoader.loadSync(
    ['bert/v1/encoder.proto', 'bert/v1/classifier.proto'],
    // Field names as in the .proto; 64-bit numbers and enums as strings; optional fields kept.
    { includeDirs: [PROTO], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
  );
  return grpc.loadPackageDefinition(definition).bert.v1;
}

// Plaintext, or TLS trusting `ca`; the API key goes on every call as `authorization: Bearer`.
function credentials(ca, apiKey) {
  if (!ca) return grpc.credentials.createInsecure();
  let creds = grpc.credentials.createSsl(fs.readFileSync(ca));
  if (apiKey) {
    const key = grpc.credentials.createFromMetadataGenerator((_, callback) => {
      const metadata = new grpc.Metadata();
      metadata.set('authorization', `Bearer ${apiKey}`);
      callback(null, metadata);
    });
    creds = grpc.credentials.combineChannelCredentials(creds, key);
  }
  return creds;
}

function unary(client, method, request) {
  const deadline = new Date(Date.now() + 30_000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline, waitForReady: true }, (error, response) =>
      error ? reject(error) : resolve(response));
  });
}

// Embeddings of `texts`, in order, through one stream. The server answers every request once, in
// request order; a request it refuses comes back with `error` set instead of failing the stream.
function encodeAll(encoder, texts) {
  return new Promise((resolve, reject) => {
    const vectors = [];
    let next = 0;
    const call = encoder.EncodeStream({ waitForReady: true });
    call.on('data', (response) => {
      if (response.id !== String(next)) {
        reject(new Error(`answer ${response.id} for request ${next}`));
        return;
      }
      if (response.error && response.error.code !== 0) {
        reject(new Error(`request ${next}: ${response.error.message}`));
        return;
      }
      next += 1;
      for (const result of response.results) vectors.push(result.embedding);
    });
    call.on('error', reject);
    call.on('end', () => resolve(vectors));
    // Flow control: when write() says the buffer is full, wait for 'drain' (the server reads
    // at its own pace), so memory stays bounded however many texts there are.
    (async () => {
      for (let i = 0, n = 0; i < texts.length; i += BATCH, n += 1) {
        const inputs = texts.slice(i, i + BATCH).map((text) => ({ text }));
        if (!call.write({ id: String(n), inputs })) {
          await new Promise((drained) => call.once('drain', drained));
        }
      }
      call.end();
    })().catch(reject);
  });
}

async function main() {
  const { values } = parseArgs({
    options: {
      addr: { type: 'string', default: '127.0.0.1:50051' },
      ca: { type: 'string' },
      'api-key': { type: 'string' },
      'stream-inputs': { type: 'string', default: '1000' },
    },
  });
  const bert = load();
  const creds = credentials(values.ca, values['api-key']);
  const encoder = new bert.Encoder(values.addr, creds);
  const classifier = new bert.Classifier(values.addr, creds);
  const inputs = [{ text: 'A man is eating food.' }, { text: 'A man eats.' }];

  const encoded = await unary(encoder, 'Encode', { id: 'example', inputs });
  const classified = await unary(classifier, 'Classify', { id: 'example', inputs });
  const corpus = Array.from({ length: Number(values['stream-inputs']) },
    (_, i) => `bulk text ${i}: ` + 'word '.repeat(i % 17));
  const streamed = await encodeAll(encoder, corpus);
  encoder.close();
  classifier.close();

  console.log(JSON.stringify({
    encode: encoded.results.map((r) => r.embedding),
    classify: classified.results.map((r) => r.labels.map((l) => ({ label: l.label, score: l.score }))),
    stream: { texts: corpus, vectors: streamed },
  }));
}

main().catch((error) => {
  console.error(`example failed: ${error.message}`);
  process.exit(1);
});
