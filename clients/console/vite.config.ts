// Builds the console into dist/ (static files: serve them from any web server). The SDK is the
// repository's own clients/typescript source.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "./",
  resolve: {
    alias: { "@bellhop/client": fileURLToPath(new URL("../typescript/src/index.ts", import.meta.url)) },
  },
  build: { emptyOutDir: true, outDir: "dist" },
  logLevel: "warn",
});
