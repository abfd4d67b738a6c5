// Runs the bodies of Node-RED function nodes as Node-RED does (msg in; a msg, an array of msgs or null out;
// a flow context shared by the nodes of the flow, the flow's environment variables), on messages given as JSON on stdin. For the example tests.
"use strict";
const fs = require("fs");

const input = JSON.parse(fs.readFileSync(0, "utf8"));  // {functions: {id: code}, steps: [{node, msg}], env: {}}
const env = {get: (name) => (input.env || {})[name]};  // the flow's environment variables
const store = {};
const flow = {get: (key) => store[key], set: (key, value) => { store[key] = value; }};
const node = {warn() {}, log() {}, error(error) { throw new Error(String(error)); }};
const outputs = [];
for (const step of input.steps) {
  const msg = step.msg;
  if (msg.payload_base64 !== undefined) {  // what an "mqtt in" node with output "buffer" gives
    msg.payload = Buffer.from(msg.payload_base64, "base64");
    delete msg.payload_base64;
  }
  const body = new Function("msg", "flow", "node", "context", "global", "env", input.functions[step.node]);
  const result = body(msg, flow, node, {flow}, {}, env);
  outputs.push({node: step.node, result: result === undefined ? null : result});
}
process.stdout.write(JSON.stringify(outputs));
