// Builds the example page. In an app, `@bellhop/client` is installed from npm (or the packed
// tarball); here it is the package's own source.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  resolve: {
    alias: { "@bellhop/client": fileURLToPath(new URL("../../src/index.ts", import.meta.url)) },
  },
  build: { emptyOutDir: true },
  logLevel: "warn",
});
