// Validates the Prometheus Operator objects of a rendered chart (ServiceMonitor, PrometheusRule)
// against the operator's CRD schemas, from the npm package @kubernetes-models/prometheus-operator
// (installed by deploy/tools.sh k8s-models into .tools/node). Kubernetes' own schemas do not
// know these kinds, so kubernetes-validate cannot check them.
//
//   node deploy/checks/validate-monitoring.mjs rendered.yaml
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const tools = join(dirname(fileURLToPath(import.meta.url)), "..", "..", ".tools", "node", "node_modules");
const YAML = await import(pathToFileURL(createRequire(join(tools, "x.js")).resolve("yaml")).href);
// The package exports ESM only ("import" condition), so its file is imported by path.
const v1 = await import(
  pathToFileURL(join(tools, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js")).href
);
const kinds = { ServiceMonitor: v1.ServiceMonitor, PrometheusRule: v1.PrometheusRule };

let checked = 0;
let failed = 0;
for (const doc of YAML.parseAllDocuments(readFileSync(process.argv[2], "utf8"))) {
  const obj = doc.toJS();
  if (!obj || obj.apiVersion !== "monitoring.coreos.com/v1") continue;
  const Model = kinds[obj.kind];
  if (!Model) {
    console.log(`no schema for monitoring.coreos.com/v1 ${obj.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    checked++;
    console.log(`valid: ${obj.kind}/${obj.metadata.name}`);
  } catch (e) {
    failed++;
    console.log(`invalid: ${obj.kind}/${obj.metadata?.name}: ${e.message}`);
  }
}
console.log(`${checked} Prometheus Operator objects valid, ${failed} invalid`);
process.exit(failed ? 1 : 0);
