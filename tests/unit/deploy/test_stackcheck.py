"""``control.aws.stackcheck`` on small templates: each CloudFormation parameter
constraint and rule function, the short-form YAML tags, and what it refuses to guess."""

from __future__ import annotations

import pytest

from control.aws.stackcheck import Problem, TemplateError, check, load_template

pytestmark = pytest.mark.timeout(30)

TEMPLATE = """
Parameters:
  Count: {Type: Number, MinValue: 2, MaxValue: 3, Default: 2}
  Names: {Type: CommaDelimitedList, AllowedValues: [a, b, c], Default: "a,b"}
  Label: {Type: String, MinLength: 2, MaxLength: 4, Default: ab}
  Mode: {Type: String, AllowedValues: [x, y], Default: x}
Rules:
  ModeY:
    RuleCondition: !Equals [!Ref Mode, y]
    Assertions:
      - Assert: !Or [!Contains [!Ref Names, c], !EachMemberEquals [!Ref Names, b]]
        AssertDescription: mode y needs c, or only b
  InSet:
    Assertions:
      - Assert: !EachMemberIn [!Ref Names, [a, b, c]]
        AssertDescription: names from the set
Resources:
  Topic:
    Type: AWS::SNS::Topic
    Properties: {TopicName: !GetAtt Other.Name}
"""


def problems(**given: str) -> list[tuple[str, str]]:
    return [(p.parameter, p.message) for p in check(load_template(TEMPLATE), given)]


def test_defaults_pass_and_short_tags_load() -> None:
    assert problems() == []
    topic = load_template(TEMPLATE)["Resources"]["Topic"]["Properties"]
    assert topic == {"TopicName": {"Fn::GetAtt": ["Other", "Name"]}}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"Count": "1"}, ("Count", "'1': expected at least 2")),
        ({"Count": "4"}, ("Count", "'4': expected at most 3")),
        ({"Count": "two"}, ("Count", "'two': expected a number")),
        ({"Label": "a"}, ("Label", "'a': expected at least 2 characters")),
        ({"Label": "abcde"}, ("Label", "'abcde': expected at most 4 characters")),
        (
            {"Nope": "1"},
            (
                "Nope",
                "not a parameter of this template: expected one of "
                "['Count', 'Label', 'Mode', 'Names']",
            ),
        ),
    ],
)
def test_each_constraint_names_the_parameter(
    given: dict[str, str], expected: tuple[str, str]
) -> None:
    assert problems(**given) == [expected]


def test_a_value_outside_the_set_fails_its_rule_too() -> None:
    assert problems(Names="a,d") == [
        ("Names", "'d': expected one of ['a', 'b', 'c']"),
        ("Names", "rule InSet: names from the set"),
    ]


def test_rule_condition_and_functions() -> None:
    assert problems(Mode="y", Names="a,c") == []
    assert problems(Mode="y", Names="b,b") == []
    assert problems(Mode="y", Names="a,b") == [("Names", "rule ModeY: mode y needs c, or only b")]


def test_account_functions_are_reported_not_guessed() -> None:
    text = """
Parameters:
  Vpc: {Type: String, Default: vpc-1}
Rules:
  Tagged:
    Assertions:
      - Assert: !Equals [!ValueOf [!Ref Vpc, Tags], x]
Resources: {}
"""
    (found,) = check(load_template(text), {})
    assert found == Problem("(rule Tagged)", "not checked: Fn::ValueOf cannot be evaluated offline")


def test_json_template_and_garbage() -> None:
    text = '{"Parameters": {"A": {"Type": "String", "AllowedPattern": "^a+$"}}}'
    assert [str(p) for p in check(load_template(text), {"A": "b"})] == [
        "A: 'b': expected to match ^a+$"
    ]
    with pytest.raises(TemplateError, match="expected a mapping"):
        load_template("- a list")
    with pytest.raises(TemplateError, match="not a CloudFormation template"):
        load_template("{not json")
