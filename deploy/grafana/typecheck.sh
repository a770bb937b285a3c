#!/usr/bin/env bash
# Type-checks deploy/grafana/bellhop.json against the dashboard types of @grafana/schema (npm):
# the whole dashboard as `Dashboard`, and each panel's options and field config as its panel
# plugin's types (timeseries, stat). tsc in strict mode; excess or mistyped properties fail.
set -euo pipefail

cd "$(dirname "$0")/../.."
deploy/tools.sh grafana-schema
DIR=.tools/grafana
python3 - deploy/grafana/bellhop.json "$DIR/check.ts" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
panels = [p for p in dash["panels"] if p["type"] != "row"]
by_type = {}
for p in panels:
    by_type.setdefault(p["type"], []).append(p)
unknown = set(by_type) - {"timeseries", "stat"}
if unknown:
    sys.exit(f"panel types without a type check here: {sorted(unknown)}")
ts = [
    "import type { Dashboard, Panel } from '@grafana/schema';",
    "import type * as TimeSeries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';",
    "import type * as Stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';",
    # JSON carries an enum's value ("line"), TypeScript wants the enum member: Json<T> turns
    # each string enum into the union of its values and keeps everything else as it is.
    "type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T"
    " : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;",
    f"export const dashboard: Json<Dashboard> = {json.dumps(dash, indent=1)};",
    f"export const timeseries: Json<Panel<TimeSeries.Options, TimeSeries.FieldConfig>>[] = {json.dumps(by_type.get('timeseries', []), indent=1)};",
    f"export const stats: Json<Panel<Stat.Options>>[] = {json.dumps(by_type.get('stat', []), indent=1)};",
    # Panel<> types fieldConfig.custom by the plugin but leaves options a record: check them too.
    f"export const timeseriesOptions: Json<TimeSeries.Options>[] = {json.dumps([p['options'] for p in by_type.get('timeseries', [])], indent=1)};",
    f"export const statOptions: Json<Stat.Options>[] = {json.dumps([p['options'] for p in by_type.get('stat', [])], indent=1)};",
]
open(sys.argv[2], "w").write("\n".join(ts) + "\n")
PY
cd "$DIR"
./node_modules/.bin/tsc --noEmit --strict --moduleResolution bundler --module esnext --target es2022 --skipLibCheck false check.ts
echo "deploy/grafana/bellhop.json type-checks against @grafana/schema $(node -p 'require("@grafana/schema/package.json").version') ($(python3 -c 'import json;d=json.load(open("../../deploy/grafana/bellhop.json"));print(len([p for p in d["panels"] if p["type"]!="row"]))') panels)"
