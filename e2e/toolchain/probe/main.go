// Command e2e-probe is the one program of the real node's test image: a small HTTP server and the
// client-side checks the e2e harness runs inside pods (exec), so that no test depends on an image
// from a registry. Standard library only; built static (CGO_ENABLED=0, pure-Go DNS resolver).
//
//	e2e-probe serve ADDR      answer every HTTP request with the pod's hostname
//	e2e-probe get URL         GET URL, print the body; exit 0 on 200
//	e2e-probe dial HOST:PORT  open a TCP connection; print connected|refused|<error>
//	e2e-probe lookup NAME     resolve NAME with the pod's resolver; print the addresses
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Exit codes the harness tells apart.
const (
	exitFailed  = 1 // the check failed for a reason not listed below
	exitUsage   = 2
	exitRefused = 3 // the connection was actively refused (RST or ICMP unreachable/prohibited)
)

const timeout = 5 * time.Second

func serve(addr string) int {
	host, _ := os.Hostname()
	srv := &http.Server{
		Addr:              addr,
		ReadHeaderTimeout: timeout,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintln(w, host)
		}),
	}
	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-done
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		return exitFailed
	}
	return 0
}

func get(url string) int {
	client := &http.Client{Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Println(err)
		return exitFailed
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	fmt.Print(string(body))
	if resp.StatusCode != http.StatusOK {
		fmt.Println(resp.Status)
		return exitFailed
	}
	return 0
}

func dial(addr string) int {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err == nil {
		conn.Close()
		fmt.Println("connected")
		return 0
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) {
		fmt.Println("refused:", err)
		return exitRefused
	}
	fmt.Println(err)
	return exitFailed
}

func lookup(name string) int {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		fmt.Println(err)
		return exitFailed
	}
	fmt.Println(strings.Join(addrs, " "))
	return 0
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: e2e-probe serve ADDR | get URL | dial HOST:PORT | lookup NAME")
		os.Exit(exitUsage)
	}
	commands := map[string]func(string) int{"serve": serve, "get": get, "dial": dial, "lookup": lookup}
	run, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintln(os.Stderr, "e2e-probe: unknown command", os.Args[1])
		os.Exit(exitUsage)
	}
	os.Exit(run(os.Args[2]))
}
