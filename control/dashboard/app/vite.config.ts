// Vite build of the dashboard: TypeScript + Preact (JSX via esbuild, no plugin) into
// ../dist, which the config API serves at / and /assets/.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "../dist",
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 400,
  },
});
