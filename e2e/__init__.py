"""The real-engine end-to-end harness: toolchain build and the throwaway control plane."""
