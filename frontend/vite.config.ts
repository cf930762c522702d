import { defineConfig } from 'vitest/config';
import react from '@vitejs/plugin-react';

// The Rust server serves dist/ at `/` on the same origin as the API; in dev,
// Vite proxies /api to a locally running server.
export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      '/api': {
        target: 'http://127.0.0.1:8080',
        changeOrigin: false,
      },
    },
  },
  build: {
    outDir: 'dist',
    sourcemap: true,
  },
  test: {
    environment: 'jsdom',
    include: ['__tests__/**/*.test.{ts,tsx}'],
    globals: false,
  },
});
