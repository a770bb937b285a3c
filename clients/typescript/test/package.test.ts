/**
 * The package as an app sees it: `npm test` builds dist/ first; Node (no bundler) imports both
 * entry points by name through package.json `exports`, and each has its type declarations.
 */

import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

describe("package", () => {
  it("exports @bellhop/client and @bellhop/client/react as ESM with type declarations", () => {
    const manifest = JSON.parse(readFileSync(path.join(pkg, "package.json"), "utf8")) as {
      name: string;
      type: string;
      exports: Record<string, { types: string; import: string }>;
    };
    expect(manifest.name).toBe("@bellhop/client");
    expect(manifest.type).toBe("module");
    for (const entry of [".", "./react"]) {
      const e = manifest.exports[entry]!;
      expect(existsSync(path.join(pkg, e.import)), `${e.import} (run npm run build)`).toBe(true);
      expect(existsSync(path.join(pkg, e.types)), e.types).toBe(true);
    }
    // Node resolves the package's own name through `exports` (self-reference): what an app's
    // `import` does once the package is installed.
    const out = execFileSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `const c = await import("@bellhop/client"); const r = await import("@bellhop/client/react");
         console.log(JSON.stringify({ client: typeof c.BellhopClient, sub: typeof c.Subscription, err: typeof c.BellhopError,
           compare: c.compareOffsets("1-0", "2-0"), useBellhop: typeof r.useBellhop, useChannel: typeof r.useChannel,
           provider: typeof r.BellhopProvider }));`,
      ],
      { cwd: pkg, encoding: "utf8" },
    );
    expect(JSON.parse(out)).toEqual({
      client: "function",
      sub: "function",
      err: "function",
      compare: -1,
      useBellhop: "function",
      useChannel: "function",
      provider: "function",
    });
  });
});
