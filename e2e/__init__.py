"""The real-engine end-to-end harness: toolchain build, the throwaway control plane, and the
app's images built for real (engine, base images, registry)."""
