"""The description the fleet's CloudFormation templates are generated from
(``deploy/cloudformation/generate.py``), one module per part."""
