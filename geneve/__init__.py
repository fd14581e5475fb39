"""GENEVE (RFC 8926) and AWS Gateway Load Balancer TLV codec and data-plane glue (GWLB issue)."""
