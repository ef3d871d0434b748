// Validates JSON documents against a JSON Schema (draft 2020-12) with Ajv, a real validator:
// for the test of `gatehouse config schema`.
// usage: node validate-schema.mjs SCHEMA.json DOC.json… — one line per document: "ok FILE" or
// "invalid FILE: errors"; exits 1 when any is invalid.
import { readFileSync } from 'node:fs';
import Ajv2020 from 'ajv/dist/2020.js';

const [schemaFile, ...docs] = process.argv.slice(2);
const ajv = new Ajv2020({ allErrors: true, strict: false });
const validate = ajv.compile(JSON.parse(readFileSync(schemaFile, 'utf8')));
let bad = 0;
for (const f of docs) {
  if (validate(JSON.parse(readFileSync(f, 'utf8')))) {
    console.log(`ok ${f}`);
  } else {
    bad += 1;
    console.log(`invalid ${f}: ${JSON.stringify(validate.errors)}`);
  }
}
process.exit(bad ? 1 : 0);
