// Command pulumi-language-python is mlstack's minimal Python language host for the e2e suite.
//
// Pulumi's own host (module github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) is
// not served by the Go module proxy this project can reach, so the suite builds this one against
// the pinned sdk/v3. It implements only what `pulumi preview/up/refresh/destroy` need of a
// LanguageRuntime: Run (start pulumi-language-python-exec, shipped in sdk/v3, in the project's
// virtualenv), RunPlugin for a policy pack (`--policy-pack`: since CLI 3.221 the engine starts a
// Python pack through its language host, as `python -u -m pulumi.policy ENGINE PACK_DIR` in the
// pack's virtualenv, and reads the analyzer's port from the streamed stdout), GetPluginInfo and an
// empty GetRequiredPackages (the provider plugins are ambient, on PATH). Everything else answers
// Unimplemented, which the engine tolerates.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// execExitBail is the exec shim's exit code for "an error was already shown to the user".
const execExitBail = 32

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	engine string
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: "0.0.0-mlstack-e2e"}, nil
}

func (h *host) GetRequiredPackages(
	context.Context, *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *host) GetRequiredPlugins(
	context.Context, *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

// python returns the interpreter to use and extra environment for the project's virtualenv.
func python(info *pulumirpc.ProgramInfo) (string, []string, error) {
	opts := info.GetOptions().AsMap()
	if tc, ok := opts["toolchain"].(string); ok && tc != "" && tc != "pip" {
		return "", nil, fmt.Errorf("toolchain %q is not supported by the e2e language host", tc)
	}
	venv, _ := opts["virtualenv"].(string)
	if venv == "" {
		return "python3", nil, nil
	}
	if !filepath.IsAbs(venv) {
		venv = filepath.Join(info.GetRootDirectory(), venv)
	}
	bin := filepath.Join(venv, "bin")
	env := []string{
		"VIRTUAL_ENV=" + venv,
		"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"),
	}
	return filepath.Join(bin, "python"), env, nil
}

func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	info := req.GetInfo()
	if info == nil {
		return nil, errors.New("RunRequest without program info")
	}
	py, env, err := python(info)
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	shim := filepath.Join(filepath.Dir(self), "pulumi-language-python-exec")

	program := info.GetProgramDirectory()
	if ep := info.GetEntryPoint(); ep != "" && ep != "." {
		program = filepath.Join(program, ep)
	}
	args := []string{
		"-u", shim,
		"--monitor", req.GetMonitorAddress(),
		"--engine", h.engine,
		"--project", req.GetProject(),
		"--root_directory", info.GetRootDirectory(),
		"--stack", req.GetStack(),
		"--pwd", req.GetPwd(),
		"--dry_run", strconv.FormatBool(req.GetDryRun()),
		"--parallel", strconv.Itoa(int(req.GetParallel())),
		"--organization", req.GetOrganization(),
		program,
	}
	args = append(args, req.GetArgs()...)

	// A stack without config has none: the exec shim wants an object, not null.
	values := req.GetConfig()
	if values == nil {
		values = map[string]string{}
	}
	config, err := json.Marshal(values)
	if err != nil {
		return nil, err
	}
	secretKeys := req.GetConfigSecretKeys()
	if secretKeys == nil {
		secretKeys = []string{}
	}
	secrets, err := json.Marshal(secretKeys)
	if err != nil {
		return nil, err
	}

	cmd := exec.CommandContext(ctx, py, args...)
	cmd.Dir = req.GetPwd()
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env,
		"PULUMI_CONFIG="+string(config),
		"PULUMI_CONFIG_SECRET_KEYS="+string(secrets),
	)
	err = cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return &pulumirpc.RunResponse{}, nil
	case errors.As(err, &exitErr) && exitErr.ExitCode() == execExitBail:
		return &pulumirpc.RunResponse{Bail: true}, nil
	case errors.As(err, &exitErr):
		return &pulumirpc.RunResponse{
			Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode()),
		}, nil
	default:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("running %s: %v", py, err)}, nil
	}
}

// RunPlugin starts a policy pack (kind "analyzer") and streams its stdout and stderr to the
// engine, then its exit code. Resource and tool plugins written in Python are not supported.
func (h *host) RunPlugin(
	req *pulumirpc.RunPluginRequest, server grpc.ServerStreamingServer[pulumirpc.RunPluginResponse],
) error {
	info := req.GetInfo()
	if info == nil {
		return status.Error(codes.InvalidArgument, "RunPluginRequest without program info")
	}
	if req.GetKind() != "analyzer" {
		return status.Errorf(codes.Unimplemented,
			"the e2e language host runs policy packs only, not %q plugins", req.GetKind())
	}
	py, env, err := python(info)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	// pulumi.policy's __main__ takes the engine's address (the engine's only argument) and the
	// program: the pack's folder, whose __main__.py it runs.
	args := append([]string{"-u", "-m", "pulumi.policy"}, req.GetArgs()...)
	args = append(args, info.GetProgramDirectory())
	cmd := exec.CommandContext(server.Context(), py, args...)
	cmd.Dir = info.GetProgramDirectory()
	cmd.Env = append(append([]string{}, req.GetEnv()...), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return status.Errorf(codes.FailedPrecondition, "starting %s: %v", py, err)
	}

	// Send is not safe for concurrent use: one lock for both streams.
	var mu sync.Mutex
	send := func(msg *pulumirpc.RunPluginResponse) {
		mu.Lock()
		defer mu.Unlock()
		_ = server.Send(msg)
	}
	var copies sync.WaitGroup
	forward := func(r interface{ Read([]byte) (int, error) }, wrap func([]byte) *pulumirpc.RunPluginResponse) {
		defer copies.Done()
		buf := make([]byte, 32*1024)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				send(wrap(append([]byte(nil), buf[:n]...)))
			}
			if err != nil {
				return
			}
		}
	}
	copies.Add(2)
	go forward(stdout, func(b []byte) *pulumirpc.RunPluginResponse {
		return &pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Stdout{Stdout: b}}
	})
	go forward(stderr, func(b []byte) *pulumirpc.RunPluginResponse {
		return &pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Stderr{Stderr: b}}
	})
	// Every byte is read before Wait closes the pipes.
	copies.Wait()
	code := int32(0)
	if err := cmd.Wait(); err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			return err
		}
		code = int32(exitErr.ExitCode())
	}
	send(&pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Exitcode{Exitcode: code}})
	return nil
}

func main() {
	// The engine passes its own address as the last argument (flags, if any, come before it).
	var engine string
	for _, a := range os.Args[1:] {
		if !strings.HasPrefix(a, "-") {
			engine = a
		}
	}
	if engine == "" {
		fmt.Fprintln(os.Stderr, "usage: pulumi-language-python [flags] ENGINE_ADDRESS")
		os.Exit(2)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Exit when the engine goes away.
	go func() { _ = rpcutil.Healthcheck(ctx, engine, 5*time.Minute, cancel) }()

	stop := make(chan bool)
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel: stop,
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, &host{engine: engine})
			return nil
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "could not start the language host: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("%d\n", handle.Port)

	select {
	case <-ctx.Done():
		close(stop)
	case err := <-handle.Done:
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
