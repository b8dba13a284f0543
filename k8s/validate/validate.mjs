// Renders every kustomization under k8s/ (base and overlays/*) with `kubectl kustomize` and
// checks each rendered object three ways:
//  1. schema: the object's kubernetes-models class (.validate(): the Kubernetes OpenAPI schema,
//     types, required fields, enums, formats);
//  2. strict fields: no field the schema does not define (what `kubectl apply` rejects with
//     --validate=strict): the schema validator runs on a proxy that records every field it
//     looks at; a field it never read is not in the schema;
//  3. latentserve's deployment rules (restricted pod security, gRPC probes on the port that
//     serves grpc.health in plaintext, drain within the grace period, $(VAR) references that
//     resolve, TLS/token files on read-only Secret volumes, workers under TLS advertising a DNS
//     name a certificate can carry, workers registering with every router replica through a
//     headless Service the NetworkPolicies let them reach, a PDB per Deployment, NetworkPolicy
//     shape, namespaces).
// Before that, each check must reject a deliberately broken object (a validator that accepts
// everything fails here), and the Dockerfile at the repository root is linted (dockerfilelint).
// Exit status 0 only when everything passes. Usage: node k8s/validate/validate.mjs
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { EXPECTATIONS, expectationErrors } from "./expectations.mjs";
import { documentedMetrics, monitoringErrors } from "./monitoring.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const k8sDir = path.resolve(here, "..");
const repoRoot = path.resolve(k8sDir, "..");

// ---- rendering ----

// Kustomizations applied next to an overlay (Prometheus Operator objects, an autoscaler).
const ADD_ONS = ["k8s/monitoring", "k8s/autoscaling"];

function findKustomizations() {
  const dirs = [path.join(k8sDir, "base")];
  const overlays = path.join(k8sDir, "overlays");
  if (existsSync(overlays)) {
    for (const name of readdirSync(overlays).sort()) dirs.push(path.join(overlays, name));
  }
  // What plugs into a cluster's monitoring and autoscaling, applied next to an overlay.
  for (const extra of ADD_ONS) dirs.push(path.join(repoRoot, extra));
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

// Custom resources with schemas from @kubernetes-models/prometheus-operator (PodMonitor, PrometheusRule).
const PROMETHEUS_OPERATOR_GROUP = "monitoring.coreos.com";

const classCache = new Map();
async function modelClass(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (!classCache.has(key)) {
    const { group, version } = groupVersion(apiVersion);
    const modulePath = group === PROMETHEUS_OPERATOR_GROUP
      ? `@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`
      : group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
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
    // The Prometheus Operator package does not export its schemas: imported by file.
    const source = group === PROMETHEUS_OPERATOR_GROUP
      ? path.join(here, "node_modules/@kubernetes-models/prometheus-operator/_schemas",
        `ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoring${cap(version)}${kind}.js`)
      : `kubernetes-models/_schemas/${name}`;
    let fn = null;
    try {
      fn = (await import(source)).validate ?? null;
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

// "0.0.0.0:50051" -> 50051; undefined when there is no numeric port.
function portOf(address) {
  if (address == null) return undefined;
  const m = /:(\d+)$/.exec(String(address));
  return m ? Number(m[1]) : undefined;
}

const SERVING_ROLES = ["router", "prefill", "decode", "serve"];
// Flags naming files the process reads at start (TLS: also re-read while running).
const FILE_FLAGS = ["tls-cert", "tls-key", "tls-ca", "auth-token-file"];
const CLUSTER_SCOPED = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
  "CustomResourceDefinition", "PriorityClass", "RuntimeClass", "IngressClass", "ValidatingWebhookConfiguration",
  "MutatingWebhookConfiguration"]);

// The script of a `command: [/bin/sh, -c, SCRIPT, ...]` wrapper, else undefined.
function shellScript(c) {
  const cmd = c.command ?? [];
  return /^(\/bin\/|\/usr\/bin\/)?(sh|bash|dash)$/.test(String(cmd[0] ?? "")) && cmd[1] === "-c" ? String(cmd[2] ?? "") : undefined;
}

// The flags the server gets: its args, plus any --flag=value a shell wrapper appends.
function effectiveArgs(c) {
  const args = (c.args ?? []).map(String);
  const script = shellScript(c);
  if (script === undefined) return args;
  const extra = [];
  for (const m of script.matchAll(/(?:^|\s)--([a-z][a-z0-9-]*)=("(\$\$?\([^)]*\)|[^"\\]|\\.)*"|'[^']*'|\S+)/g)) {
    extra.push(`--${m[1]}=${m[2].replace(/^(["'])(.*)\1$/s, "$2")}`);
  }
  return [...args, ...extra];
}

// Replaces each $(VAR) with its value from the container's env (literal values) or envFrom
// ConfigMaps; leaves unknown references (and fieldRef values) as they are.
function expandVars(text, c, configMaps) {
  const values = new Map();
  for (const from of c.envFrom ?? []) {
    const cm = configMaps.find((m) => m.metadata?.name === from.configMapRef?.name);
    for (const [k, v] of Object.entries(cm?.data ?? {})) values.set((from.prefix ?? "") + k, v);
  }
  for (const e of c.env ?? []) if (e.value !== undefined) values.set(e.name, e.value);
  return String(text).replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (all, name) => (values.has(name) ? values.get(name) : all));
}

// Ports that serve only grpc.health.v1 in plaintext (--health-listen) in this render.
function healthPorts(all) {
  const ports = new Set();
  for (const o of all) {
    for (const c of podSpecOf(o)?.containers ?? []) {
      const port = portOf(flagValue(effectiveArgs(c), "health-listen"));
      if (port !== undefined) ports.add(port);
    }
  }
  return ports;
}

// A file named by a flag must come from a read-only, whole-directory Secret volume of the pod:
// a file baked into the image or a Secret that is not mounted fails at start; a subPath mount
// never sees a rotated Secret.
function secretFileErrors(c, pod, flag, file) {
  const errors = [];
  const where = `container ${c.name}: --${flag}=${file}`;
  const mounts = (c.volumeMounts ?? []).filter((m) => file === m.mountPath || file.startsWith(`${m.mountPath.replace(/\/$/, "")}/`));
  mounts.sort((a, b) => b.mountPath.length - a.mountPath.length);
  const mount = mounts[0];
  if (!mount) return [`${where} is not under any volumeMount of the container (mount the Secret that holds it)`];
  const volume = (pod.volumes ?? []).find((v) => v.name === mount.name);
  if (!volume) return [`${where}: volumeMount '${mount.name}' names no volume of the pod`];
  const secrets = volume.secret ? [volume.secret] : (volume.projected?.sources ?? []).map((s) => s.secret).filter(Boolean);
  if (secrets.length === 0) errors.push(`${where}: volume '${volume.name}' is not a Secret (credentials belong in a Secret)`);
  if (secrets.some((sec) => sec.optional === true)) errors.push(`${where}: Secret volume '${volume.name}' is optional: the process would start without its file`);
  if (mount.readOnly !== true) errors.push(`${where}: volumeMount '${mount.name}' must be readOnly`);
  if (mount.subPath || mount.subPathExpr) errors.push(`${where}: volumeMount '${mount.name}' uses subPath, which never sees a rotated Secret`);
  const rel = file.slice(mount.mountPath.replace(/\/$/, "").length + 1);
  if (volume.secret?.items && !volume.secret.items.some((i) => i.path === rel)) {
    errors.push(`${where}: Secret volume '${volume.name}' lists items, none with path '${rel}'`);
  }
  if (volume.projected && secrets.length && !secrets.some((sec) => !sec.items || sec.items.some((i) => i.path === rel))) {
    errors.push(`${where}: no Secret source of projected volume '${volume.name}' provides '${rel}'`);
  }
  return errors;
}

// ---- workers -> router replicas ----

// The pod templates of a render (Deployments etc.) with their labels, namespace and server role.
function podTemplates(all) {
  return all.filter((o) => podSpecOf(o) && o.kind !== "Pod").map((o) => {
    const c = podSpecOf(o).containers?.[0] ?? {};
    const args = effectiveArgs(c);
    return { o, labels: o.spec?.template?.metadata?.labels ?? {}, namespace: o.metadata?.namespace, c, args,
      role: SERVING_ROLES.includes(args[0]) ? args[0] : null };
  });
}

// The Service a host names in cluster DNS: <service>[.<namespace>[.svc[.<domain>]]]; undefined
// for an IP or a name that is not under .svc.
function serviceOfHost(host, defaultNamespace) {
  const h = host.replace(/\.$/, "");
  if (/^[0-9.]+$/.test(h) || h.includes(":") || h.startsWith("[")) return undefined;
  const labels = h.split(".");
  if (labels.length >= 3 && labels[2] !== "svc") return undefined;
  return { name: labels[0], namespace: labels[1] ?? defaultNamespace };
}

function findService(all, ref) {
  return all.find((o) => o.kind === "Service" && o.metadata?.name === ref.name && (o.metadata?.namespace ?? ref.namespace) === ref.namespace);
}

// The pod templates a Service's selector picks (none for an empty selector).
function selectedTemplates(svc, all) {
  const sel = svc.spec?.selector ?? {};
  if (Object.keys(sel).length === 0) return [];
  return podTemplates(all).filter((t) => t.namespace === svc.metadata?.namespace && Object.entries(sel).every(([k, v]) => t.labels[k] === v));
}

// --routers-dns HOST:PORT: HOST must be a headless Service (DNS answers with every pod IP, so
// the worker registers with every replica) that selects the router pods and only those,
// publishes not-ready addresses (a starting replica learns the workers before it takes clients),
// and PORT must be the routers' --listen port (the worker dials the pod IPs directly).
// Returns the router templates it reaches (for the NetworkPolicy check) and the errors.
function routersDnsCheck(value, obj, c, configMaps, all) {
  const errors = [];
  const expanded = expandVars(value, c, configMaps);
  const m = /^(.+):([0-9]+)$/.exec(expanded);
  if (!m) return { errors: [`--routers-dns=${value} (${expanded}) must be HOST:PORT`], routers: [] };
  const [host, port] = [m[1], Number(m[2])];
  const ref = serviceOfHost(host, obj.metadata?.namespace);
  if (!ref) {
    return { errors: [`--routers-dns host '${host}' is not a Service name (<service>[.<namespace>[.svc[.<domain>]]]): name the headless Service of the router replicas`], routers: [] };
  }
  const svc = findService(all, ref);
  if (!svc) return { errors: [`--routers-dns names Service '${ref.name}' in namespace '${ref.namespace}', which is not rendered`], routers: [] };
  if (svc.spec?.clusterIP !== "None") {
    errors.push(`--routers-dns: Service '${ref.name}' must be headless (clusterIP: None): a ClusterIP Service resolves to one virtual IP, so the worker would register with one router replica only`);
  }
  if (svc.spec?.publishNotReadyAddresses !== true) {
    errors.push(`--routers-dns: Service '${ref.name}' must set publishNotReadyAddresses: true (a starting router replica must learn the workers before it is ready)`);
  }
  const selected = selectedTemplates(svc, all);
  const routers = selected.filter((t) => t.role === "router");
  if (routers.length === 0) errors.push(`--routers-dns: Service '${ref.name}' selects no router pods`);
  const others = selected.filter((t) => t.role !== "router");
  if (others.length) errors.push(`--routers-dns: Service '${ref.name}' also selects pods that are not routers (${others.map((t) => describe(t.o)).join(", ")})`);
  for (const t of routers) {
    const listen = portOf(flagValue(t.args, "listen"));
    if (listen !== port) errors.push(`--routers-dns port ${port} is not the --listen port ${listen} of ${describe(t.o)}`);
  }
  return { errors, routers, port };
}

// --router A,B: a name of a ClusterIP Service in front of several router replicas reaches one
// of them per connection, so the worker would register with that one only.
function routerListErrors(value, obj, c, configMaps, all) {
  const errors = [];
  for (const entry of expandVars(value, c, configMaps).split(",").map((x) => x.trim()).filter(Boolean)) {
    const ref = serviceOfHost(entry.replace(/:[0-9]+$/, ""), obj.metadata?.namespace);
    const svc = ref && findService(all, ref);
    if (!svc || svc.spec?.clusterIP === "None") continue;
    const replicas = selectedTemplates(svc, all).filter((t) => t.role === "router")
      .reduce((n, t) => n + (t.o.spec?.replicas ?? 1), 0);
    if (replicas > 1) {
      errors.push(`--router=${entry} names the ClusterIP Service '${ref.name}' in front of ${replicas} router replicas: the worker registers with only one of them (use --routers-dns with a headless Service)`);
    }
  }
  return errors;
}

// Whether the NetworkPolicies of the render admit TCP `port` on the pods of template `target`
// from the pods of template `source`. ipBlock peers are not counted (pod IPs are unknowable
// here) and matchExpressions selectors are not evaluated (treated as not matching).
function selectorMatches(selector, labels) {
  if (!selector) return false;
  if ((selector.matchExpressions ?? []).length) return false;
  return labelsMatch(selector, labels);
}

function policyAdmits(all, target, source, port) {
  const namedPorts = new Map((target.c.ports ?? []).map((p) => [p.name, p.containerPort]));
  const policies = all.filter((p) => p.kind === "NetworkPolicy" && p.metadata?.namespace === target.namespace &&
    (p.spec?.policyTypes ?? ["Ingress"]).includes("Ingress") && selectorMatches(p.spec?.podSelector ?? {}, target.labels));
  if (policies.length === 0) return true;  // not isolated for ingress
  const portOk = (rule) => (rule.ports ?? []).length === 0 || rule.ports.some((p) => {
    if ((p.protocol ?? "TCP") !== "TCP") return false;
    if (p.port === undefined) return true;
    const n = typeof p.port === "string" ? namedPorts.get(p.port) : p.port;
    return n === port || (p.endPort !== undefined && n <= port && port <= p.endPort);
  });
  const peerOk = (peer) => {
    if (peer.ipBlock) return false;
    if (peer.namespaceSelector) {
      const nsLabels = { "kubernetes.io/metadata.name": source.namespace };
      if (!selectorMatches(peer.namespaceSelector, nsLabels)) return false;
      return peer.podSelector ? selectorMatches(peer.podSelector, source.labels) : true;
    }
    return source.namespace === target.namespace && selectorMatches(peer.podSelector ?? {}, source.labels);
  };
  return policies.some((p) => (p.spec?.ingress ?? []).some((rule) => portOk(rule) && ((rule.from ?? []).length === 0 || rule.from.some(peerOk))));
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
  if (!CLUSTER_SCOPED.has(obj.kind) && !obj.metadata?.namespace) {
    add(`${obj.kind} has no namespace: it would land in the kubectl context's namespace (set namespace: in the kustomization)`);
  }
  if (obj.kind === "NetworkPolicy") {
    const component = obj.spec?.podSelector?.matchLabels?.["app.kubernetes.io/component"];
    const health = healthPorts(all);
    for (const [i, rule] of (obj.spec?.ingress ?? []).entries()) {
      const from = rule.from ?? [];
      const ports = (rule.ports ?? []).map((p) => p.port);
      // Metrics and the plaintext health ports (--health-listen: grpc.health.v1 only) may be
      // opened wider, e.g. to a node CIDR where the network plugin filters kubelet probes.
      const onlyMetrics = ports.length > 0 && ports.every((p) => p === 9090 || p === "metrics" || p === "health" || health.has(p));
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
  for (const { c, init: initContainer } of containers) {
    // A Job's containers run to completion like initContainers: no server rules for them.
    const init = initContainer || obj.kind === "Job";
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
      // `$$` is Kubernetes' escape for a literal `$`: `$$(x)` is not a reference.
      for (const m of String(arg).replace(/\$\$/g, "").matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
        if (!env.has(m[1])) add(`${where}: '${arg}' uses $(${m[1]}), which the container does not define`);
      }
    }
    // A shell wrapper: its $VAR / ${VAR} must be defined too, and it must exec the server with
    // the manifest's args (else SIGTERM goes to the shell and the drain never starts).
    const script = shellScript(c);
    if (script !== undefined) {
      for (const m of script.replace(/\$\$/g, "$").matchAll(/\$\{?([A-Za-z_][A-Za-z0-9_]*)/g)) {
        if (!env.has(m[1])) add(`${where}: the shell wrapper uses $${m[1]}, which the container does not define`);
      }
      if (!init && !/(^|[\n;&|]\s*)exec\s/.test(script)) add(`${where}: a shell wrapper must exec the server (else SIGTERM stops at the shell)`);
      if (!init && (c.args ?? []).length > 0 && !script.includes('"$@"')) add(`${where}: the shell wrapper drops the container's args (pass "$@")`);
    }
    if (init) continue;
    if (c.args?.[0] === "make-test-model") add(`${where}: make-test-model belongs in an initContainer`);
    const args = effectiveArgs(c);
    const role = SERVING_ROLES.includes(args[0]) ? args[0] : null;
    const tls = flagValue(args, "tls-cert") !== undefined;
    const listenPort = portOf(flagValue(args, "listen"));
    const healthPort = portOf(flagValue(args, "health-listen"));
    // Probes: native gRPC health checks on a declared port, the one where the process serves
    // grpc.health.v1 in plaintext: --health-listen when given, else --listen. The kubelet's
    // gRPC probe cannot speak TLS, so under --tls-cert the serving port always fails it.
    const ports = new Set((c.ports ?? []).map((p) => p.containerPort));
    const probePort = healthPort ?? listenPort;
    if (tls && healthPort !== undefined && healthPort === listenPort) {
      add(`${where}: --health-listen must be another port than the TLS serving port --listen`);
    }
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const p = c[probe];
      if (!p?.grpc) add(`${where}: ${probe} must be a grpc: probe`);
      else {
        if (!ports.has(p.grpc.port)) add(`${where}: ${probe} port ${p.grpc.port} is not a container port`);
        if (tls && p.grpc.port === listenPort) {
          add(`${where}: ${probe} targets the TLS serving port ${listenPort}: a kubelet gRPC probe cannot speak TLS (probe the --health-listen port)`);
        } else if (role && probePort !== undefined && p.grpc.port !== probePort) {
          add(`${where}: ${probe} targets port ${p.grpc.port}, but grpc.health is served in plaintext on ${probePort} (${healthPort !== undefined ? "--health-listen" : "--listen"})`);
        }
      }
    }
    // TLS and token files: flags that go together, files on read-only Secret volumes.
    if (tls !== (flagValue(args, "tls-key") !== undefined)) add(`${where}: --tls-cert and --tls-key go together`);
    if (tls && flagValue(args, "tls-ca") === undefined) {
      add(`${where}: --tls-cert without --tls-ca: the process's internal channels cannot verify their peers`);
    }
    if (flagValue(args, "auth-token-file") !== undefined && !tls) {
      add(`${where}: --auth-token-file needs --tls-cert/--tls-key (the binary refuses a bearer token in plaintext)`);
    }
    for (const flag of FILE_FLAGS) {
      const file = flagValue(args, flag);
      if (file !== undefined) for (const e of secretFileErrors(c, pod, flag, file)) add(e);
    }
    // Under TLS a peer verifies the address a worker advertises against its certificate: a pod
    // IP (new on every restart) cannot be in it. A DNS name under a headless Service
    // (<dashed IP>.<service>.<ns>.svc...) needs that Service rendered, selecting the pod, and
    // publishing not-ready endpoints (registration precedes readiness; draining pods are not
    // ready but still serve their work).
    if (tls && ["prefill", "decode"].includes(role)) {
      const advertised = String(flagValue(args, "advertise") ?? "");
      const host = expandVars(advertised, c, configMaps).replace(/:[0-9]+$/, "");
      if (/^(\$\(POD_IP\)|\$\{?POD_IP\}?)$/.test(host) || /^[0-9.]+$/.test(host) || host.startsWith("[")) {
        add(`${where}: under TLS --advertise must be a DNS name the certificate carries, not an IP (${advertised})`);
      } else {
        const m = /\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.|$)/.exec(host);
        if (m) {
          const [sub, ns] = [m[1], m[3]];
          const svc = all.find((o) => o.kind === "Service" && o.metadata?.name === sub);
          if (!svc) add(`${where}: advertises a name under Service '${sub}', which is not rendered`);
          else {
            if (svc.metadata?.namespace && svc.metadata.namespace !== ns) add(`${where}: advertises a name in namespace '${ns}', Service '${sub}' is in '${svc.metadata.namespace}'`);
            if (svc.spec?.clusterIP !== "None") add(`${where}: Service '${sub}' must be headless for per-pod DNS names`);
            if (svc.spec?.publishNotReadyAddresses !== true) add(`${where}: Service '${sub}' must set publishNotReadyAddresses: true (names must resolve before readiness and while draining)`);
            if (Object.keys(svc.spec?.selector ?? {}).length === 0 ||
                !Object.entries(svc.spec.selector).every(([k, v]) => obj.spec?.template?.metadata?.labels?.[k] === v)) {
              add(`${where}: Service '${sub}' does not select this pod`);
            }
          }
        }
      }
    }
    // Drain: preStop sleep + --drain-ms must end before SIGKILL at terminationGracePeriodSeconds.
    const sleepCmd = c.lifecycle?.preStop?.exec?.command;
    const preStop = sleepCmd?.[0] === "sleep" ? Number(sleepCmd[1]) : c.lifecycle?.preStop?.sleep?.seconds;
    if (!(preStop > 0)) add(`${where}: lifecycle.preStop must sleep (exec ["sleep", N]) before SIGTERM`);
    const drainMs = Number(flagValue(c.args ?? [], "drain-ms") ?? 10000);
    if (preStop > 0 && preStop + drainMs / 1000 + 5 > grace) {
      add(`${where}: preStop ${preStop}s + drain ${drainMs / 1000}s + 5s margin exceeds terminationGracePeriodSeconds ${grace}`);
    }
    if (["prefill", "decode"].includes(role) && !flagValue(args, "advertise")) {
      add(`${where}: workers must --advertise an address the router can dial (the pod IP)`);
    }
    // Registration with the routers: every replica (headless Service), reachable through the
    // NetworkPolicies on the routers' pod IPs (not only through a Service).
    if (["prefill", "decode"].includes(role)) {
      const routersDns = flagValue(args, "routers-dns");
      const routerList = flagValue(args, "router");
      if (routersDns === undefined && !routerList) add(`${where}: a worker needs --routers-dns or --router (it refuses to start without one)`);
      if (routerList) for (const e of routerListErrors(routerList, obj, c, configMaps, all)) add(`${where}: ${e}`);
      if (routersDns !== undefined) {
        const check = routersDnsCheck(routersDns, obj, c, configMaps, all);
        for (const e of check.errors) add(`${where}: ${e}`);
        const self = { o: obj, labels: obj.spec?.template?.metadata?.labels ?? {}, namespace: obj.metadata?.namespace, c };
        for (const r of check.routers) {
          if (!policyAdmits(all, r, self, check.port)) {
            add(`${where}: no NetworkPolicy admits ingress to the router pods of ${describe(r.o)} on port ${check.port} from this pod (it registers with each router pod directly)`);
          }
        }
      }
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
  // TLS is all or nothing: a plaintext process cannot talk to a TLS one.
  const servers = objects.flatMap((o) => (podSpecOf(o)?.containers ?? []).map((c) => ({ o, c })))
    .filter(({ c }) => SERVING_ROLES.includes(String(c.args?.[0])));
  const withTls = servers.filter(({ c }) => flagValue(c.args.map(String), "tls-cert") !== undefined);
  if (withTls.length > 0 && withTls.length < servers.length) {
    const plain = servers.filter((s) => !withTls.includes(s)).map(({ o, c }) => `${describe(o)} ${c.name}`);
    errors.push(`rule: TLS on some serving processes but not on ${plain.join(", ")}: they cannot talk to each other`);
  }
  return errors;
}

async function checkObject(obj, all) {
  if (!obj?.apiVersion || !obj?.kind) return ["not a Kubernetes object (no apiVersion/kind)"];
  return [...(await schemaErrors(obj)), ...(await unknownFieldErrors(obj)), ...ruleErrors(obj, all)];
}

const describe = (o) => `${o?.kind ?? "?"}/${o?.metadata?.name ?? "?"}`;

// ---- negative checks: each must find the planted fault ----

// `sample`: the base's render (plaintext); `tlsSample`: the first render whose servers use
// --tls-cert (overlays/gpu), for the TLS, health-port, Secret-volume and advertise rules.
async function selfTest(sample, tlsSample) {
  const failures = [];
  const deployment = sample.find((o) => o.kind === "Deployment");
  if (!deployment) return ["self-test: the base renders no Deployment to break"];
  const c0 = (d) => d.spec.template.spec.containers[0];
  const setArg = (d, flag, value) => {
    const args = c0(d).args;
    const i = args.findIndex((a) => a === `--${flag}` || a.startsWith(`--${flag}=`));
    if (value === undefined) args.splice(i, 1);
    else args[i] = `--${flag}=${value}`;
  };
  const cases = [
    [deployment, "replicas as a string (schema type)", (d) => { d.spec.replicas = "two"; }, /schema:.*replicas/],
    [deployment, "container without a name (schema required)", (d) => { delete c0(d).name; }, /schema:.*name/],
    [deployment, "misspelt field (strict)", (d) => { c0(d).readinesProbe = { grpc: { port: 1 } }; }, /unknown field .*readinesProbe/],
    [deployment, "unknown nested field (strict)", (d) => { d.spec.template.spec.securityContext.runAsNonroot = true; }, /unknown field .*runAsNonroot/],
    [deployment, "writable root filesystem (rule)", (d) => { c0(d).securityContext.readOnlyRootFilesystem = false; }, /readOnlyRootFilesystem/],
    [deployment, "drain longer than the grace period (rule)", (d) => { d.spec.template.spec.terminationGracePeriodSeconds = 1; }, /exceeds terminationGracePeriodSeconds/],
    [deployment, "http probe instead of grpc (rule)", (d) => { c0(d).livenessProbe = { httpGet: { path: "/", port: 8080 } }; }, /livenessProbe must be a grpc/],
    [deployment, "probe on a declared port that is not the health port (rule)", (d) => { c0(d).readinessProbe.grpc.port = 9090; }, /readinessProbe targets port 9090, but grpc.health is served/],
    [deployment, "undefined $(VAR) (rule)", (d) => { c0(d).args.push("--x=$(NOT_DEFINED)"); }, /NOT_DEFINED/],
    [deployment, "object without a namespace (rule)", (d) => { delete d.metadata.namespace; }, /has no namespace/],
    [deployment, "token file without TLS (rule)", (d) => { c0(d).args.push("--auth-token-file=/etc/t/token"); }, /--auth-token-file needs --tls-cert/],
  ];
  // Workers -> router replicas (--routers-dns), on a base worker; the headless Service and the
  // NetworkPolicies are mutated but reported on the worker.
  const worker = sample.find((o) => o.kind === "Deployment" && ["prefill", "decode"].includes(c0(o).args?.[0]));
  const workerDns = worker && flagValue(c0(worker).args, "routers-dns");
  const peersRef = workerDns && serviceOfHost(expandVars(workerDns, c0(worker), sample.filter((o) => o.kind === "ConfigMap")).replace(/:[0-9]+$/, ""),
    worker.metadata?.namespace);
  const peers = peersRef && findService(sample, peersRef);
  if (!worker || !peers) {
    failures.push("self-test: the base has no worker with --routers-dns naming a rendered Service: the router-replica rules go untested");
  } else {
    const clientService = sample.find((o) => o.kind === "Service" && o !== peers && o.spec?.clusterIP !== "None" &&
      selectedTemplates(o, sample).some((t) => t.role === "router"));
    cases.push(
      [worker, "--routers-dns naming a Service that is not rendered (rule)", (d) => { setArg(d, "routers-dns", `nope.${d.metadata.namespace}.svc.cluster.local:50051`); }, /--routers-dns names Service 'nope'/],
      [worker, "--routers-dns port other than the routers' --listen (rule)", (d) => { setArg(d, "routers-dns", `${peersRef.name}.${peersRef.namespace}:50052`); }, /--routers-dns port 50052 is not the --listen port/],
      [worker, "--routers-dns naming a pod IP (rule)", (d) => { setArg(d, "routers-dns", "10.0.0.1:50051"); }, /is not a Service name/],
      [worker, "no --routers-dns and no --router (rule)", (d) => { setArg(d, "routers-dns"); }, /needs --routers-dns or --router/],
      [peers, "routers' Service not headless (rule)", (s) => { delete s.spec.clusterIP; }, /must be headless/, worker],
      [peers, "routers' Service hides not-ready routers (rule)", (s) => { delete s.spec.publishNotReadyAddresses; }, /--routers-dns: .*publishNotReadyAddresses/, worker],
      [peers, "routers' Service selects the decode workers (rule)", (s) => { s.spec.selector = { ...s.spec.selector, "app.kubernetes.io/component": "decode" }; }, /selects no router pods/, worker],
      [peers, "routers' Service selects every latentserve pod (rule)", (s) => { s.spec.selector = { "app.kubernetes.io/name": "latentserve" }; }, /also selects pods that are not routers/, worker],
    );
    if (!clientService) failures.push("self-test: no ClusterIP Service selects the routers: the --router rule goes untested");
    else {
      cases.push([worker, "--router through the ClusterIP Service of several replicas (rule)", (d) => {
        setArg(d, "routers-dns", `${clientService.metadata.name}:50051`);
        c0(d).args.push(`--router=${clientService.metadata.name}:50051`);
        c0(d).args = c0(d).args.filter((a) => !a.startsWith("--routers-dns"));
      }, /registers with only one of them/]);
    }
    // NetworkPolicy: the routers reachable from outside on a CIDR only, nothing from the
    // namespace's pods (two policies changed: not expressible as one mutated object above).
    const isolated = sample.filter((o) => !(o.kind === "NetworkPolicy" && (o.spec?.ingress ?? []).some((r) => (r.from ?? []).some((f) => f.podSelector && !f.namespaceSelector))))
      .map((o) => (o.kind === "NetworkPolicy" && o.spec?.podSelector?.matchLabels?.["app.kubernetes.io/component"] === "router"
        ? { ...o, spec: { ...o.spec, ingress: [{ from: [{ ipBlock: { cidr: "203.0.113.0/24" } }], ports: [{ port: 50051, protocol: "TCP" }] }] } } : o));
    const npErrors = await checkObject(worker, isolated);
    if (!npErrors.some((e) => /no NetworkPolicy admits ingress to the router pods/.test(e))) {
      failures.push(`self-test 'workers cannot reach the router pods (NetworkPolicy rule)': not detected (got: ${npErrors.join("; ") || "no errors"})`);
    }
  }
  const tlsRouter = tlsSample?.find((o) => o.kind === "Deployment" && c0(o).args?.[0] === "router");
  const tlsWorker = tlsSample?.find((o) => o.kind === "Deployment" && ["prefill", "decode"].includes(c0(o).args?.[0]));
  if (!tlsRouter || !tlsWorker) {
    failures.push("self-test: no render has a TLS router and TLS worker (components/tls) to break: the TLS rules go untested");
  } else {
    const tlsVolume = (d) => {
      const file = flagValue(c0(d).args, "tls-cert");
      return c0(d).volumeMounts.find((m) => file.startsWith(`${m.mountPath}/`));
    };
    cases.push(
      [tlsRouter, "TLS: probe on the TLS serving port (rule)", (d) => { c0(d).livenessProbe.grpc.port = portOf(flagValue(c0(d).args, "listen")); }, /livenessProbe targets the TLS serving port/],
      [tlsRouter, "TLS: --health-listen dropped, probes left on its port (rule)", (d) => { setArg(d, "health-listen"); }, /startupProbe targets port \d+, but grpc.health is served in plaintext on \d+ \(--listen\)/],
      [tlsRouter, "TLS: health port = serving port (rule)", (d) => { setArg(d, "health-listen", flagValue(c0(d).args, "listen")); }, /--health-listen must be another port/],
      [tlsRouter, "TLS: the certificate's Secret volume missing (rule)", (d) => {
        const name = tlsVolume(d).name;
        d.spec.template.spec.volumes = d.spec.template.spec.volumes.filter((v) => v.name !== name);
      }, /--tls-cert=.*names no volume of the pod/],
      [tlsRouter, "TLS: the token's mount missing (rule)", (d) => {
        const file = flagValue(c0(d).args, "auth-token-file");
        c0(d).volumeMounts = c0(d).volumeMounts.filter((m) => !file.startsWith(`${m.mountPath}/`));
      }, /--auth-token-file=.* is not under any volumeMount/],
      [tlsRouter, "TLS: certificate on an emptyDir, not a Secret (rule)", (d) => {
        const name = tlsVolume(d).name;
        d.spec.template.spec.volumes = d.spec.template.spec.volumes.map((v) => (v.name === name ? { name, emptyDir: {} } : v));
      }, /--tls-cert=.*is not a Secret/],
      [tlsRouter, "TLS: Secret mounted with subPath (rule)", (d) => { tlsVolume(d).subPath = "tls.crt"; }, /uses subPath/],
      [tlsRouter, "TLS: --tls-key dropped (rule)", (d) => { setArg(d, "tls-key"); }, /--tls-cert and --tls-key go together/],
      [tlsWorker, "TLS: worker advertising its pod IP (rule)", (d) => {
        c0(d).command[2] = c0(d).command[2].replace(/--advertise=.*$/s, "--advertise=$$(POD_IP):50051");  // JS: "$$" -> "$"
      }, /--advertise must be a DNS name/],
      [tlsWorker, "TLS: shell wrapper without exec (rule)", (d) => { c0(d).command[2] = c0(d).command[2].replace(/\bexec\s+/, ""); }, /must exec the server/],
      [tlsWorker, "TLS: shell wrapper with an undefined $VAR (rule)", (d) => { c0(d).command[2] = c0(d).command[2].replace("$POD_IP", "$POD_IPX"); }, /uses \$POD_IPX/],
    );
    // The workers' DNS Service: mutated, but reported on the worker that advertises under it.
    const sub = /\.([a-z0-9-]+)\.[a-z0-9-]+\.svc(\.|$)/.exec(expandVars(flagValue(effectiveArgs(c0(tlsWorker)), "advertise") ?? "", c0(tlsWorker),
      tlsSample.filter((o) => o.kind === "ConfigMap")))?.[1];
    const workersService = tlsSample.find((o) => o.kind === "Service" && o.metadata?.name === sub);
    if (!workersService) failures.push("self-test: the TLS workers advertise no name under a rendered Service");
    else {
      cases.push(
        [workersService, "TLS: workers' DNS Service hides not-ready pods (rule)", (s) => { delete s.spec.publishNotReadyAddresses; }, /publishNotReadyAddresses/, tlsWorker],
        [workersService, "TLS: workers' DNS Service selects other pods (rule)", (s) => { s.spec.selector = { "app.kubernetes.io/component": "router" }; }, /does not select this pod/, tlsWorker],
      );
    }
  }
  for (const [target, name, mutate, expect, reportedOn] of cases) {
    const samples = sample.includes(target) ? sample : tlsSample;
    const broken = structuredClone(target);
    mutate(broken);
    const all = samples.map((o) => (o === target ? broken : o));
    const errors = await checkObject(reportedOn ?? broken, all);
    if (!errors.some((e) => expect.test(e))) failures.push(`self-test '${name}': not detected (got: ${errors.join("; ") || "no errors"})`);
  }
  // Whole-render rule: a plaintext worker among TLS ones.
  if (tlsWorker) {
    const plain = structuredClone(tlsWorker);
    c0(plain).args = c0(plain).args.filter((a) => !/^--tls-/.test(a));
    const errors = renderErrors(tlsSample.map((o) => (o === tlsWorker ? plain : o)));
    if (!errors.some((e) => /TLS on some serving processes but not on/.test(e))) {
      failures.push(`self-test 'TLS: one plaintext worker among TLS ones (render rule)': not detected (got: ${errors.join("; ") || "no errors"})`);
    }
  }
  for (const [objs, d] of [[sample, deployment], [sample, worker], [tlsSample, tlsRouter], [tlsSample, tlsWorker]]) {
    if (!d) continue;
    const clean = await checkObject(d, objs);
    if (clean.length) failures.push(`self-test: the unmodified ${describe(d)} has errors: ${clean.join("; ")}`);
  }
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

const knownMetrics = documentedMetrics(repoRoot);
{
  // Self-test: a rule or dashboard naming a metric latentserve does not export must fail.
  const planted = [{ kind: "PrometheusRule", metadata: { name: "planted" }, spec: { groups: [{ name: "g", rules: [
    { alert: "A", expr: "latentserve_no_such_metric > 0", labels: { severity: "warning" }, annotations: { summary: "s" } }] }] } },
  { kind: "ConfigMap", metadata: { name: "d", labels: { grafana_dashboard: "1" } }, data: { "d.json": JSON.stringify(
    { title: "t", uid: "u", panels: [{ id: 1, title: "p", gridPos: {}, targets: [{ expr: "rate(latentserve_bogus_total[1m])" }] }] }) } }];
  if (monitoringErrors(planted, knownMetrics).length !== 2 || knownMetrics.size < 20) {
    report("self-test", ["monitoring check: a planted unknown metric in a rule and in a dashboard were not both caught"]);
  }
}
const kustomizations = findKustomizations();
if (kustomizations.length === 0) report("k8s", ["no kustomization.yaml found under k8s/"]);
let baseObjects = null;
let tlsObjects = null;
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
  if (tlsObjects === null && objects.some((o) => (podSpecOf(o)?.containers ?? []).some((c) => flagValue((c.args ?? []).map(String), "tls-cert") !== undefined) &&
      o.kind === "Deployment" && ["prefill", "decode"].includes(String(o.spec?.template?.spec?.containers?.[0]?.args?.[0])))) {
    tlsObjects = objects;
  }
  const before = failed;
  for (const obj of objects) report(`${label} ${describe(obj)}`, await checkObject(obj, objects));
  // monitoring/ and autoscaling/ add to a deployment: the whole-deployment rules are not theirs.
  if (!ADD_ONS.includes(label)) report(label, renderErrors(objects));
  report(label, expectationErrors(label, objects, { flagValue, expandVars, podSpecOf }));
  report(label, monitoringErrors(objects, knownMetrics));
  if (EXPECTATIONS[label]) {
    // Self-test: the same render with the base's 65,536-token cache must fail the promise.
    const planted = structuredClone(objects);
    for (const cm of planted.filter((o) => o.kind === "ConfigMap" && o.data?.CACHE_TOKENS)) cm.data.CACHE_TOKENS = "65536";
    if (expectationErrors(label, planted, { flagValue, expandVars, podSpecOf }).length === 0) {
      report("self-test", [`${label}: a 65,536-token CACHE_TOKENS passed the overlay's context promise`]);
    }
  }
  const kinds = {};
  for (const o of objects) kinds[o.kind] = (kinds[o.kind] ?? 0) + 1;
  console.log(`${failed === before ? "ok  " : "FAIL"} ${label}: ${objects.length} objects (${Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(", ")})`);
}
if (baseObjects) {
  const selfFailures = await selfTest(baseObjects, tlsObjects);
  report("self-test", selfFailures);
  if (selfFailures.length === 0) console.log("ok   self-test: every planted fault was detected (schema, strict fields, rules, TLS rules)");
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
