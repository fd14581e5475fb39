# Cloud Spectra Gateway AMI (Packer, amazon-ebs builder). UNTESTED: written against the
# Packer amazon plugin's documentation; the recipe it runs (install.sh) is what
# tests/e2e/test_ami.py builds and boots. Usage:
#   packer init deploy/ami && packer build -var region=eu-west-1 deploy/ami/spectra.pkr.hcl
packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type = string
}

variable "instance_type" {
  type    = string
  default = "c6in.large"
}

source "amazon-ebs" "spectra" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "cloud-spectra-gateway-{{timestamp}}"
  ssh_username  = "admin"
  ena_support   = true
  # the official Debian 12 image (account 136693071363: Debian cloud team)
  source_ami_filter {
    owners      = ["136693071363"]
    most_recent = true
    filters = {
      name                = "debian-12-amd64-*"
      architecture        = "x86_64"
      virtualization-type = "hvm"
    }
  }
  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_endpoint               = "enabled"
  }
  imds_support = "v2.0"
}

build {
  sources = ["source.amazon-ebs.spectra"]

  provisioner "shell" {
    inline = ["sudo install -d -o admin /opt/spectra/src"]
  }

  # the repository (run packer from its root)
  provisioner "file" {
    source      = "./"
    destination = "/opt/spectra/src"
  }

  provisioner "shell" {
    inline = [
      "sudo /opt/spectra/src/deploy/ami/install.sh",
      # the image's instances get their own identity and first boot
      "sudo rm -f /etc/spectra/agent.env /var/lib/spectra/firstboot.json /var/lib/spectra/config.db*",
      "sudo truncate -s 0 /etc/machine-id",
    ]
  }
}
