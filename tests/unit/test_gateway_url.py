"""The gateway URL guard reads the Service's status as the provider's typed objects."""

from __future__ import annotations

from pulumi_kubernetes.core.v1.outputs import LoadBalancerIngress, LoadBalancerStatus, ServiceStatus

from components.app import load_balancer_host


def status(*ingress: LoadBalancerIngress) -> ServiceStatus:
    return ServiceStatus(load_balancer=LoadBalancerStatus(ingress=list(ingress)))


def test_an_ip_address_is_the_host() -> None:
    assert load_balancer_host(status(LoadBalancerIngress(ip="192.0.2.10"))) == "192.0.2.10"


def test_a_load_balancer_reached_by_name_gives_its_name() -> None:
    ingress = LoadBalancerIngress(hostname="a1b2.elb.eu-west-1.amazonaws.com")
    assert load_balancer_host(status(ingress)) == "a1b2.elb.eu-west-1.amazonaws.com"


def test_no_ingress_yet_means_no_host() -> None:
    assert load_balancer_host(status()) is None
    assert load_balancer_host(ServiceStatus(load_balancer=LoadBalancerStatus())) is None
    assert load_balancer_host(ServiceStatus()) is None
    assert load_balancer_host(None) is None
