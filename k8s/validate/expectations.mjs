// What particular overlays promise, checked on their render (validate.mjs calls this for each
// kustomization): the gpu overlay, as shipped, serves a 1,048,576-token context on the GPU
// with the prefill chunk the benchmarks use (issue 18, item 2).
export const EXPECTATIONS = {
  "k8s/overlays/gpu": { minCacheTokens: 1048576, backend: "cuda", minChunk: 4096 },
};

// `helpers`: { flagValue, expandVars, podSpecOf } from validate.mjs.
export function expectationErrors(label, objects, helpers) {
  const want = EXPECTATIONS[label];
  if (!want) return [];
  const { flagValue, expandVars, podSpecOf } = helpers;
  const configMaps = objects.filter((o) => o.kind === "ConfigMap");
  const errors = [];
  let workers = 0;
  for (const obj of objects) {
    const c = podSpecOf(obj)?.containers?.[0];
    const args = (c?.args ?? []).map(String);
    if (!["prefill", "decode", "serve"].includes(args[0])) continue;
    workers++;
    const where = `${obj.kind}/${obj.metadata?.name}`;
    const value = (flag) => {
      const raw = flagValue(args, flag);
      return raw === undefined ? undefined : expandVars(raw, c, configMaps);
    };
    const cacheTokens = Number(value("cache-tokens"));
    if (!(cacheTokens >= want.minCacheTokens)) {
      errors.push(`${where}: --cache-tokens is ${value("cache-tokens")}, this overlay promises a ${want.minCacheTokens}-token context`);
    }
    if (value("backend") !== want.backend) errors.push(`${where}: --backend is ${value("backend")}, not ${want.backend}`);
    const chunk = Number(value("chunk"));
    if (!(chunk >= want.minChunk)) errors.push(`${where}: --chunk is ${value("chunk")}, below ${want.minChunk}`);
  }
  if (workers === 0) errors.push("renders no prefill/decode worker to check the promised context on");
  return errors;
}
