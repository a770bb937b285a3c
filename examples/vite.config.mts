// Serves or builds one example with the repository's SDK source as `@bellhop/client`, and a
// `token` endpoint standing in for the hotel's backend (it returns $BELLHOP_TOKEN).
//   cd clients/console && npx vite --config ../../examples/vite.config.mts ../../examples/guest-page
import { fileURLToPath } from "node:url";

// A plain object (no `import "vite"`): this directory has no node_modules of its own.
export default {
  resolve: {
    alias: { "@bellhop/client": fileURLToPath(new URL("../clients/typescript/src/index.ts", import.meta.url)) },
  },
  build: { emptyOutDir: true, target: "es2022" },
  logLevel: "warn",
  plugins: [
    {
      name: "token",
      configureServer(server: { middlewares: { use: (f: (req: { url?: string }, res: { setHeader: (k: string, v: string) => void; end: (s: string) => void }, next: () => void) => void) => void } }) {
        server.middlewares.use((req, res, next) => {
          if (!req.url?.split("?")[0]?.endsWith("/token")) return next();
          res.setHeader("content-type", "text/plain");
          res.end(process.env.BELLHOP_TOKEN ?? "");
        });
      },
    },
  ],
};
