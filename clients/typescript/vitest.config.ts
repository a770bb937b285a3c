import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts", "test/**/*.test.tsx"],
    // Each file starts its own nodes and Redis; one file at a time keeps the 2-core machine's
    // timing honest (the node-kill and drain tests measure reconnects).
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 30_000,
    reporters: ["default"],
  },
});
