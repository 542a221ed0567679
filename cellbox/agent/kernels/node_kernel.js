'use strict';
// The javascript kernel: a long-lived Node process holding the user's globals.
//
// Started by the agent as `node --expose-internals node_kernel.js` (built-in modules
// only). Same wiring as the python kernel: fd 1/2 are pipes the agent reads;
// CELLBOX_KERNEL_FDS="IN,OUT" is the control channel, JSON lines: a request
// {code, execution_count, envs} in; {type: "ready"} once, then per request
// "display"/"result" events and a final {type: "done", id, exit_code, error} out.
// Each display waits for an {type: "ack"} line from the agent (see waitAck).
//
// Cells run as scripts in the kernel's own global context, like Node's REPL. To
// let a cell be run again, top-level `let`/`const`/`class` declarations are
// rewritten to `var` (same length, so line/column numbers stay right); top-level
// `await` uses the REPL's own rewrite. Both use Node's bundled acorn, reached
// through --expose-internals; without it cells run unchanged.

const vm = require('vm');
const util = require('util');
const fs = require('fs');
const net = require('net');
const path = require('path');
const Module = require('module');

let acorn = null;
let processTopLevelAwait = null;
try { acorn = require('internal/deps/acorn/acorn/dist/acorn'); } catch (e) { /* optional */ }
try { ({ processTopLevelAwait } = require('internal/repl/await')); } catch (e) { /* optional */ }

const proc = process;
const env = process.env;
const [CTL_IN, CTL_OUT] = env.CELLBOX_KERNEL_FDS.split(',').map(Number);
delete env.CELLBOX_KERNEL_FDS;
const KERNEL_FILE = __filename;
const stringify = JSON.stringify;
const parseJSON = JSON.parse;
const inspect = util.inspect;
const writeSync = fs.writeSync;
const BufferFrom = Buffer.from;

function send(message) {
  let data;
  try {
    data = stringify(message);
  } catch (e) {
    data = stringify({ ...message, data: { 'text/plain': String(message.data && message.data['text/plain']) } });
  }
  const buf = BufferFrom(data + '\n', 'utf8');
  let off = 0;
  while (off < buf.length) {
    try {
      off += writeSync(CTL_OUT, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
    }
  }
}

function writeErr(text) {
  try { proc.stderr.write(text); } catch (e) { /* nothing to do */ }
}

function plain(value) {
  try {
    return inspect(value, { colors: false, depth: 4 });
  } catch (e) {
    return `<inspect failed: ${e && e.message}>`;
  }
}

function display(value, options) {
  let data;
  if (options && options.raw && value && typeof value === 'object') {
    data = { ...value };
  } else {
    data = { 'text/plain': plain(value) };
  }
  send({ type: 'display', data, metadata: (options && options.metadata) || {} });
  waitAck();
}

// The agent answers a display with an ack once it has drained the output written
// before it; waiting for it keeps later output from overtaking the display. The
// read is synchronous (the control socket below does not read while a cell runs
// synchronously); CTL_IN is non-blocking, so sleep briefly on EAGAIN.
const sleepCell = new Int32Array(new SharedArrayBuffer(4));
let pending = '';
function waitAck() {
  const buf = Buffer.alloc(4096);
  for (;;) {
    const index = pending.indexOf('\n');
    if (index >= 0) {
      const line = pending.slice(0, index);
      pending = pending.slice(index + 1);
      if (line.includes('"ack"')) return;
      continue;
    }
    let n;
    try {
      n = fs.readSync(CTL_IN, buf, 0, buf.length, null);
    } catch (e) {
      if (e.code === 'EAGAIN') { Atomics.wait(sleepCell, 0, 0, 1); continue; }
      throw e;
    }
    if (n === 0) proc.exit(0);
    pending += buf.toString('utf8', 0, n);
  }
}

// What user code sees besides Node's globals.
const userRequire = Module.createRequire(path.join(proc.cwd(), '<cell>'));
globalThis.require = userRequire;
globalThis.display = display;

// import() in cells: Node's own loader, resolving relative specifiers from the
// working directory. Its one-time experimental warning is not the user's output.
const importModuleDynamically = vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
const emitWarning = proc.emitWarning;
proc.emitWarning = function (warning, ...rest) {
  const text = typeof warning === 'string' ? warning : warning && warning.message;
  if (typeof text === 'string' && text.includes('USE_MAIN_CONTEXT_DEFAULT_LOADER')) return undefined;
  return emitWarning.call(this, warning, ...rest);
};

// SIGINT: during synchronous code vm's breakOnSigint throws; while the cell awaits,
// this handler abandons the wait. Between cells it is ignored.
let abortWait = null;
proc.on('SIGINT', () => { if (abortWait) abortWait(); });
proc.on('uncaughtException', (err) => { writeErr(`Uncaught ${cleanStack(err)}\n`); });
proc.on('unhandledRejection', (reason) => { writeErr(`Unhandled promise rejection: ${cleanStack(reason)}\n`); });

class Interrupted extends Error {}
Object.defineProperty(Interrupted.prototype, 'name', { value: 'Interrupted' });

function interruptible(promise) {
  return new Promise((resolve, reject) => {
    abortWait = () => reject(new Interrupted('execution interrupted (SIGINT) while awaiting'));
    Promise.resolve(promise).then(resolve, reject);
  }).finally(() => { abortWait = null; });
}

function isInternalFrame(line) {
  const t = line.trim();
  if (!t.startsWith('at ')) return false;
  return t.includes(KERNEL_FILE) || t.includes('node:internal') || t.includes('node:vm') ||
    t.includes('(vm.js') || t === 'at new Promise (<anonymous>)';
}

function cleanStack(err) {
  if (err && typeof err === 'object' && typeof err.stack === 'string') {
    return err.stack.split('\n').filter((line) => !isInternalFrame(line)).join('\n');
  }
  return plain(err);
}

function errorInfo(err) {
  if (err && typeof err === 'object' && typeof err.stack === 'string') {
    let name = 'Error';
    let value = '';
    try { name = String(err.name || (err.constructor && err.constructor.name) || 'Error'); } catch (e) { /* keep */ }
    try { value = String(err.message); } catch (e) { /* keep */ }
    if (err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') {
      name = 'Interrupted';
      value = 'execution interrupted (SIGINT)';
    }
    return { name, value, traceback: cleanStack(err) };
  }
  const text = plain(err);
  return { name: 'Uncaught', value: text, traceback: `Uncaught ${text}` };
}

function transform(code) {
  let source = code;
  let isAsync = false;
  if (processTopLevelAwait) {
    try {
      const wrapped = processTopLevelAwait(code);
      if (wrapped !== null) {
        source = wrapped;
        isAsync = true;
      }
    } catch (e) { /* a syntax error: V8 reports it below */ }
  }
  let showLast = true;
  if (acorn) {
    let ast;
    try {
      ast = acorn.parse(source, { ecmaVersion: 'latest', sourceType: 'script', allowHashBang: true });
    } catch (e) {
      return { source, isAsync, showLast };
    }
    const edits = [];
    for (const node of ast.body) {
      if (node.type === 'VariableDeclaration' && (node.kind === 'let' || node.kind === 'const')) {
        edits.push([node.start, node.start + node.kind.length, node.kind === 'let' ? 'var' : 'var  ']);
      } else if (node.type === 'ClassDeclaration' && node.id) {
        edits.push([node.start, node.start, `var ${node.id.name} = `]);
        edits.push([node.end, node.end, ';']);
      }
    }
    edits.sort((a, b) => b[0] - a[0]);
    for (const [start, end, text] of edits) source = source.slice(0, start) + text + source.slice(end);
    const last = ast.body[ast.body.length - 1];
    showLast = isAsync || (last !== undefined && last.type === 'ExpressionStatement');
  }
  return { source, isAsync, showLast };
}

function applyEnvs(envs) {
  const saved = {};
  for (const [key, value] of Object.entries(envs || {})) {
    saved[key] = Object.prototype.hasOwnProperty.call(env, key) ? env[key] : undefined;
    env[key] = value;
  }
  return saved;
}

function restoreEnvs(saved) {
  for (const [key, value] of Object.entries(saved)) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
}

async function execute(request) {
  const count = request.execution_count || 0;
  const filename = `<cell-${count}>`;
  const saved = applyEnvs(request.envs);
  let error = null;
  try {
    const { source, isAsync, showLast } = transform(String(request.code || ''));
    const options = { filename };
    if (importModuleDynamically !== undefined) options.importModuleDynamically = importModuleDynamically;
    const script = new vm.Script(source, options);
    let value = script.runInThisContext({ breakOnSigint: true, displayErrors: true });
    if (isAsync) {
      const wrapped = await interruptible(value);
      value = wrapped && typeof wrapped === 'object' && 'value' in wrapped ? wrapped.value : undefined;
    }
    if (showLast && value !== undefined) {
      globalThis._ = value;
      send({ type: 'result', data: { 'text/plain': plain(value) }, metadata: {} });
    }
  } catch (err) {
    error = errorInfo(err);
    writeErr(error.traceback.endsWith('\n') ? error.traceback : `${error.traceback}\n`);
  } finally {
    restoreEnvs(saved);
  }
  return { exit_code: error ? 1 : 0, error };
}

let queue = Promise.resolve();
const input = new net.Socket({ fd: CTL_IN, readable: true, writable: false });
input.setEncoding('utf8');
input.on('data', (chunk) => {
  pending += chunk;
  let index;
  while ((index = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, index);
    pending = pending.slice(index + 1);
    if (!line.trim() || line.includes('"type":"ack"')) continue;  // a late ack
    queue = queue.then(async () => {
      let request;
      try {
        request = parseJSON(line);
      } catch (e) {
        send({ type: 'done', id: null, exit_code: 1, error: { name: 'ProtocolError', value: String(e), traceback: '' } });
        return;
      }
      const reply = await execute(request);
      send({ type: 'done', id: request.execution_count, ...reply });
    });
  }
});
input.on('end', () => proc.exit(0));
input.on('error', () => proc.exit(0));

send({ type: 'ready', pid: proc.pid });
