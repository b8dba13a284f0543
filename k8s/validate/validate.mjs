// Renders every kustomization under k8s/ (base and overlays/*) with `kubectl kustomize` and
// checks each rendered object three ways:
//  1. schema: the object's kubernetes-models class (.validate(): the Kubernetes OpenAPI schema,
//     types, required fields, enums, formats);
//  2. strict fields: no field the schema does not define (what `kubectl apply` rejects with
//     --validate=strict): the schema validator runs on a proxy that records every field it
//     looks at; a field it never read is not in the schema;
//  3. latentserve's deployment rules (restricted pod security, gRPC probes, drain within the
//     grace period, $(VAR) references that resolve, a PDB per Deployment, NetworkPolicy shape).
// Before that, each check must reject a deliberately broken object (a validator that accepts
// everything fails here), and the Dockerfile at the repository root is linted (dockerfilelint).
// Exit status 0 only when everything passes. Usage: node k8s/validate/validate.mjs
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const here = path.dirname(fileURLToPath(import.meta.url));
const k8sDir = path.resolve(here, "..");
const repoRoot = path.resolve(k8sDir, "..");

// ---- rendering ----

function findKustomizations() {
  const dirs = [path.join(k8sDir, "base")];
  const overlays = path.join(k8sDir, "overlays");
  if (existsSync(overlays)) {
    for (const name of readdirSync(overlays).sort()) dirs.push(path.join(overlays, name));
  }
  return dirs.filter((d) => existsSync(path.join(d, "kustomization.yaml")));
}

function render(dir) {
  const tries = [
    ["kubectl", ["kustomize", dir]],
    ["kustomize", ["build", dir]],
  ];
  let lastError = null;
  for (const [cmd, args] of tries) {
    try {
      return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      if (e.code === "ENOENT") continue;  // tool not installed: try the next
      lastError = `${cmd} ${args.join(" ")}: ${(e.stderr || e.message).toString().trim().split("\n")[0]}`;
      break;
    }
  }
  throw new Error(lastError ?? "neither kubectl nor kustomize is installed: cannot render kustomizations");
}

function parseObjects(text, source) {
  const objects = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length) throw new Error(`${source}: YAML: ${doc.errors[0].message}`);
    const obj = doc.toJS();
    if (obj != null) objects.push(obj);
  }
  return objects;
}

// ---- 1 + 2: schema and strict fields ----

function groupVersion(apiVersion) {
  const slash = apiVersion.indexOf("/");
  return slash < 0 ? { group: "", version: apiVersion } : { group: apiVersion.slice(0, slash), version: apiVersion.slice(slash + 1) };
}

const classCache = new Map();
async function modelClass(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (!classCache.has(key)) {
    const { group, version } = groupVersion(apiVersion);
    const modulePath = group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
    let cls = null;
    try {
      cls = (await import(modulePath))[kind] ?? null;
    } catch {
      cls = null;
    }
    classCache.set(key, cls);
  }
  return classCache.get(key);
}

// The raw schema validator the class uses, e.g. _schemas/IoK8sApiAppsV1Deployment.
const schemaCache = new Map();
async function schemaValidator(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (!schemaCache.has(key)) {
    const { group, version } = groupVersion(apiVersion);
    const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);
    const groupName = group ? cap(group.split(".")[0]) : "Core";
    const name = `IoK8sApi${groupName}${cap(version)}${kind}`;
    let fn = null;
    try {
      fn = (await import(`kubernetes-models/_schemas/${name}`)).validate ?? null;
    } catch {
      fn = null;
    }
    schemaCache.set(key, fn);
  }
  return schemaCache.get(key);
}

async function schemaErrors(obj) {
  const cls = await modelClass(obj.apiVersion, obj.kind);
  if (!cls) return [`no schema for ${obj.apiVersion} ${obj.kind} in kubernetes-models`];
  try {
    new cls(structuredClone(obj)).validate();
    return [];
  } catch (e) {
    return String(e.message).split(/,\s*(?=data)/).map((m) => `schema: ${m.replace(/^data/, "")}`);
  }
}

// Runs the schema validator on a proxy of `obj` and reports every object field it never read.
async function unknownFieldErrors(obj) {
  const validate = await schemaValidator(obj.apiVersion, obj.kind);
  if (!validate) return [`no schema validator for ${obj.apiVersion} ${obj.kind}`];
  const read = new Map();  // object -> Set of keys read
  const proxies = new WeakMap();
  const wrap = (value) => {
    if (value === null || typeof value !== "object") return value;
    if (proxies.has(value)) return proxies.get(value);
    read.set(value, new Set());
    const proxy = new Proxy(value, {
      get(target, key, receiver) {
        if (typeof key === "string") read.get(target).add(key);
        return wrap(Reflect.get(target, key, receiver));
      },
      has(target, key) {
        if (typeof key === "string") read.get(target).add(key);
        return Reflect.has(target, key);
      },
    });
    proxies.set(value, proxy);
    return proxy;
  };
  const copy = structuredClone(obj);
  validate(wrap(copy));
  const errors = [];
  const walk = (value, where) => {
    if (value === null || typeof value !== "object") return;
    if (Array.isArray(value)) {
      value.forEach((v, i) => walk(v, `${where}/${i}`));
      return;
    }
    const seen = read.get(value);
    for (const key of Object.keys(value)) {
      if (!seen || !seen.has(key)) errors.push(`unknown field ${where}/${key}`);
      else walk(value[key], `${where}/${key}`);
    }
  };
  walk(copy, "");
  return errors;
}

// ---- 3: latentserve's rules ----

function podSpecOf(obj) {
  if (["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"].includes(obj.kind)) return obj.spec?.template?.spec;
  if (obj.kind === "Pod") return obj.spec;
  return null;
}

function labelsMatch(selector, labels) {
  return Object.entries(selector?.matchLabels ?? {}).every(([k, v]) => labels?.[k] === v);
}

function flagValue(args, name) {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === `--${name}`) return args[i + 1];
    if (args[i].startsWith(`--${name}=`)) return args[i].slice(name.length + 3);
  }
  return undefined;
}

function ruleErrors(obj, all) {
  const errors = [];
  const add = (m) => errors.push(`rule: ${m}`);
  const pod = podSpecOf(obj);
  if (obj.kind === "ServiceAccount" && obj.automountServiceAccountToken !== false) {
    add("ServiceAccount must set automountServiceAccountToken: false");
  }
  if (obj.kind === "Service" && obj.spec?.type && obj.spec.type !== "ClusterIP") {
    add(`Service type ${obj.spec.type}: expose the router through your ingress, not a node port / load balancer here`);
  }
  if (obj.kind === "NetworkPolicy") {
    const component = obj.spec?.podSelector?.matchLabels?.["app.kubernetes.io/component"];
    for (const [i, rule] of (obj.spec?.ingress ?? []).entries()) {
      const from = rule.from ?? [];
      const ports = (rule.ports ?? []).map((p) => p.port);
      const onlyMetrics = ports.length > 0 && ports.every((p) => p === 9090 || p === "metrics");
      const external = from.length === 0 || from.some((peer) => peer.ipBlock || peer.namespaceSelector);
      if (external && component !== "router" && !onlyMetrics) {
        add(`ingress rule ${i} admits traffic from outside the namespace to pods other than the router`);
      }
    }
  }
  if (!pod) return errors;

  if (pod.automountServiceAccountToken !== false) add("pod must set automountServiceAccountToken: false");
  const sa = pod.serviceAccountName;
  if (!sa || !all.some((o) => o.kind === "ServiceAccount" && o.metadata?.name === sa)) {
    add(`serviceAccountName '${sa}' is not one of the rendered ServiceAccounts`);
  }
  const psc = pod.securityContext ?? {};
  if (psc.runAsNonRoot !== true) add("pod securityContext.runAsNonRoot must be true");
  if (psc.seccompProfile?.type !== "RuntimeDefault") add("pod securityContext.seccompProfile.type must be RuntimeDefault");

  const configMaps = all.filter((o) => o.kind === "ConfigMap");
  const grace = pod.terminationGracePeriodSeconds ?? 30;
  const containers = [...(pod.initContainers ?? []).map((c) => ({ c, init: true })), ...(pod.containers ?? []).map((c) => ({ c, init: false }))];
  for (const { c, init } of containers) {
    const where = `container ${c.name}`;
    const sc = c.securityContext ?? {};
    if (sc.readOnlyRootFilesystem !== true) add(`${where}: readOnlyRootFilesystem must be true`);
    if (sc.allowPrivilegeEscalation !== false) add(`${where}: allowPrivilegeEscalation must be false`);
    if (!(sc.capabilities?.drop ?? []).includes("ALL")) add(`${where}: capabilities.drop must include ALL`);
    for (const kind of ["requests", "limits"]) {
      for (const res of ["cpu", "memory"]) {
        if (c.resources?.[kind]?.[res] == null) add(`${where}: resources.${kind}.${res} is missing`);
      }
    }
    const gpuRequest = c.resources?.requests?.["nvidia.com/gpu"];
    if (gpuRequest != null && String(gpuRequest) !== String(c.resources?.limits?.["nvidia.com/gpu"])) {
      add(`${where}: nvidia.com/gpu requests and limits must be equal`);
    }
    // Every $(VAR) in args/command must be an env var the container defines.
    const env = new Set((c.env ?? []).map((e) => e.name));
    for (const from of c.envFrom ?? []) {
      const name = from.configMapRef?.name;
      const cm = configMaps.find((m) => m.metadata?.name === name);
      if (!cm) add(`${where}: envFrom ConfigMap '${name}' is not rendered`);
      else for (const k of Object.keys(cm.data ?? {})) env.add((from.prefix ?? "") + k);
    }
    for (const arg of [...(c.command ?? []), ...(c.args ?? [])]) {
      for (const m of String(arg).matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
        if (!env.has(m[1])) add(`${where}: '${arg}' uses $(${m[1]}), which the container does not define`);
      }
    }
    if (init) continue;
    if (c.args?.[0] === "make-test-model") add(`${where}: make-test-model belongs in an initContainer`);
    // Probes: native gRPC health checks on a declared port.
    const ports = new Set((c.ports ?? []).map((p) => p.containerPort));
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const p = c[probe];
      if (!p?.grpc) add(`${where}: ${probe} must be a grpc: probe`);
      else if (!ports.has(p.grpc.port)) add(`${where}: ${probe} port ${p.grpc.port} is not a container port`);
    }
    // Drain: preStop sleep + --drain-ms must end before SIGKILL at terminationGracePeriodSeconds.
    const sleepCmd = c.lifecycle?.preStop?.exec?.command;
    const preStop = sleepCmd?.[0] === "sleep" ? Number(sleepCmd[1]) : c.lifecycle?.preStop?.sleep?.seconds;
    if (!(preStop > 0)) add(`${where}: lifecycle.preStop must sleep (exec ["sleep", N]) before SIGTERM`);
    const drainMs = Number(flagValue(c.args ?? [], "drain-ms") ?? 10000);
    if (preStop > 0 && preStop + drainMs / 1000 + 5 > grace) {
      add(`${where}: preStop ${preStop}s + drain ${drainMs / 1000}s + 5s margin exceeds terminationGracePeriodSeconds ${grace}`);
    }
    if (["prefill", "decode"].includes(c.args?.[0]) && !flagValue(c.args, "advertise")) {
      add(`${where}: workers must --advertise an address the router can dial (the pod IP)`);
    }
  }
  if (obj.kind === "Deployment") {
    const labels = obj.spec?.template?.metadata?.labels;
    if (!labelsMatch(obj.spec?.selector, labels)) add("selector does not match the pod template labels");
    const pdbs = all.filter((o) => o.kind === "PodDisruptionBudget" && labelsMatch(o.spec?.selector, labels));
    if (pdbs.length !== 1) add(`needs exactly one PodDisruptionBudget selecting its pods, found ${pdbs.length}`);
  }
  return errors;
}

// Whole-render rules: the router is the only Service target reachable from outside.
function renderErrors(objects) {
  const errors = [];
  const policies = objects.filter((o) => o.kind === "NetworkPolicy");
  const denyAll = policies.some((p) => Object.keys(p.spec?.podSelector ?? {}).length === 0 &&
    (p.spec?.policyTypes ?? []).includes("Ingress") && (p.spec?.ingress ?? []).length === 0);
  if (!denyAll) errors.push("rule: needs a default-deny ingress NetworkPolicy (podSelector: {}, no ingress rules)");
  const routerOpen = policies.some((p) => p.spec?.podSelector?.matchLabels?.["app.kubernetes.io/component"] === "router" &&
    (p.spec?.ingress ?? []).some((r) => !r.from || r.from.length === 0));
  if (!routerOpen) errors.push("rule: the router must be reachable from outside the namespace (a NetworkPolicy admitting its gRPC port)");
  return errors;
}

async function checkObject(obj, all) {
  if (!obj?.apiVersion || !obj?.kind) return ["not a Kubernetes object (no apiVersion/kind)"];
  return [...(await schemaErrors(obj)), ...(await unknownFieldErrors(obj)), ...ruleErrors(obj, all)];
}

const describe = (o) => `${o?.kind ?? "?"}/${o?.metadata?.name ?? "?"}`;

// ---- negative checks: each must find the planted fault ----

async function selfTest(sample) {
  const failures = [];
  const deployment = sample.find((o) => o.kind === "Deployment");
  if (!deployment) return ["self-test: the base renders no Deployment to break"];
  const cases = [
    ["replicas as a string (schema type)", (d) => { d.spec.replicas = "two"; }, /schema:.*replicas/],
    ["container without a name (schema required)", (d) => { delete d.spec.template.spec.containers[0].name; }, /schema:.*name/],
    ["misspelt field (strict)", (d) => { d.spec.template.spec.containers[0].readinesProbe = { grpc: { port: 1 } }; }, /unknown field .*readinesProbe/],
    ["unknown nested field (strict)", (d) => { d.spec.template.spec.securityContext.runAsNonroot = true; }, /unknown field .*runAsNonroot/],
    ["writable root filesystem (rule)", (d) => { d.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem = false; }, /readOnlyRootFilesystem/],
    ["drain longer than the grace period (rule)", (d) => { d.spec.template.spec.terminationGracePeriodSeconds = 1; }, /exceeds terminationGracePeriodSeconds/],
    ["http probe instead of grpc (rule)", (d) => { d.spec.template.spec.containers[0].livenessProbe = { httpGet: { path: "/", port: 8080 } }; }, /livenessProbe must be a grpc/],
    ["undefined $(VAR) (rule)", (d) => { d.spec.template.spec.containers[0].args.push("--x=$(NOT_DEFINED)"); }, /NOT_DEFINED/],
  ];
  for (const [name, mutate, expect] of cases) {
    const broken = structuredClone(deployment);
    mutate(broken);
    const all = sample.map((o) => (o === deployment ? broken : o));
    const errors = await checkObject(broken, all);
    if (!errors.some((e) => expect.test(e))) failures.push(`self-test '${name}': not detected (got: ${errors.join("; ") || "no errors"})`);
  }
  const clean = await checkObject(deployment, sample);
  if (clean.length) failures.push(`self-test: the unmodified ${describe(deployment)} has errors: ${clean.join("; ")}`);
  return failures;
}

// ---- Dockerfile ----

function lintDockerfile() {
  const file = path.join(repoRoot, "Dockerfile");
  if (!existsSync(file)) return ["Dockerfile: missing at the repository root"];
  const require = createRequire(import.meta.url);
  const dockerfilelint = require("dockerfilelint");
  const items = dockerfilelint.run(here, readFileSync(file, "utf8"));
  return items.map((i) => `Dockerfile:${i.line}: ${i.category}: ${i.title}: ${i.description.split("\n")[0]}`);
}

// ---- main ----

let failed = 0;
const report = (label, errors) => {
  if (errors.length === 0) return;
  failed += errors.length;
  for (const e of errors) console.log(`FAIL ${label}: ${e}`);
};

const kustomizations = findKustomizations();
if (kustomizations.length === 0) report("k8s", ["no kustomization.yaml found under k8s/"]);
let baseObjects = null;
for (const dir of kustomizations) {
  const label = path.relative(repoRoot, dir);
  let objects;
  try {
    objects = parseObjects(render(dir), label);
  } catch (e) {
    report(label, [String(e.message)]);
    continue;
  }
  if (baseObjects === null) baseObjects = objects;
  const before = failed;
  for (const obj of objects) report(`${label} ${describe(obj)}`, await checkObject(obj, objects));
  report(label, renderErrors(objects));
  const kinds = {};
  for (const o of objects) kinds[o.kind] = (kinds[o.kind] ?? 0) + 1;
  console.log(`${failed === before ? "ok  " : "FAIL"} ${label}: ${objects.length} objects (${Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(", ")})`);
}
if (baseObjects) {
  const selfFailures = await selfTest(baseObjects);
  report("self-test", selfFailures);
  if (selfFailures.length === 0) console.log("ok   self-test: every planted fault was detected (schema, strict fields, rules)");
}
const lint = lintDockerfile();
{
  // The linter must flag a plainly bad Dockerfile (untagged base, apt-get without -y).
  const require = createRequire(import.meta.url);
  const planted = require("dockerfilelint").run(here, "FROM debian\nRUN apt-get install curl\n");
  if (planted.length === 0) report("self-test", ["dockerfilelint accepted a Dockerfile with planted faults"]);
}
report("dockerfilelint", lint);
if (lint.length === 0) console.log("ok   Dockerfile: dockerfilelint clean");

if (failed) {
  console.log(`k8s validate: ${failed} problem(s)`);
  process.exit(1);
}
console.log("k8s validate: all manifests valid");
