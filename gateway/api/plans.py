"""Execution plans: a cached operation answered without graphql-core's general executor.

graphql-core's executor is built for any schema: for every field of every request it builds an
info object and a path, looks the field up, calls a resolver, checks for awaitables and completes
the value by its type. The gateway's operations have one shape: root fields that call the service
and return an object (or a union or interface of objects) whose selected fields are all scalars
or enums, read as attributes. A `Plan` does that work once per cached document and operation:
which resolver each root field calls, and for each concrete type its value may have, which
attributes to read under which response keys and how to serialise them (`__typename` included,
fragments and type conditions resolved). A request then coerces its variables (graphql-core's
own coercion) and runs the plan.

An operation gets a plan only when every step of it is one the plan knows (`plan` returns None
otherwise, and the request goes through Strawberry's full execution):

- no directives anywhere in the operation or the fragments it uses (`@skip`, `@include`);
- each root field is `__typename` or has a planned resolver (`PlannedResolvers`: a function of
  the request's context and the field's arguments, the same function the Strawberry resolver
  calls), and its type is non-null;
- every field under a root field is a leaf (scalar or enum) without a resolver of its own.

The answer is the executor's, byte for byte: the same data in the same key order, and for a
resolver's failure the same error at the same path, which the schema then masks and logs as it
does for the executor's (`GatewaySchema.run_plan`). Tests run every union member and many
document shapes through both paths and compare.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    get_named_type,
    get_nullable_type,
    get_operation_ast,
    is_abstract_type,
    is_input_object_type,
    is_leaf_type,
    is_non_null_type,
    is_object_type,
    is_required_input_field,
    located_error,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql.execution.get_variable_signature import GraphQLVariableSignature, get_variable_signature
from graphql.execution.values import VariableValues, VariableValueSource, get_argument_values, get_variable_values
from graphql.pyutils import Undefined
from graphql.utilities.coerce_input_value import coerce_default_value
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import Schema
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.arguments import convert_arguments
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.enum import StrawberryEnumDefinition
from strawberry.types.field import StrawberryField

PlannedResolver = Callable[..., Awaitable[object]]
"""`resolver(context, **arguments)`: a root field's work, with the arguments Strawberry would pass."""
PlannedResolvers = Mapping[tuple[str, str], PlannedResolver]
"""By (root type name, field name): `("Mutation", "regenerateAccessCode")`."""
Converter = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns graphql-core's coerced arguments into the resolver's keyword arguments (Strawberry's inputs)."""

_BACKREF = GraphQLCoreConverter.DEFINITION_BACKREF
_TYPENAME = "__typename"


class _Unplannable(Exception):
    """A step of the operation that a plan does not take."""


@dataclass(frozen=True, slots=True)
class _Leaf:
    key: str
    """The response key (the alias, or the field's name)."""
    attribute: str | None
    """The attribute read from the value; None for `__typename`."""
    serialize: Callable[[Any], Any]
    non_null: bool
    nodes: tuple[FieldNode, ...]
    description: str
    """`Type.field`, for the executor's message when a non-null leaf is null."""


@dataclass(frozen=True, slots=True)
class _Shape:
    """How a value of one concrete type is answered."""

    typename: str
    leaves: tuple[_Leaf, ...]


@dataclass(frozen=True, slots=True)
class _Root:
    key: str
    nodes: tuple[FieldNode, ...]
    definition: GraphQLField | None
    """None for `__typename`."""
    convert: Converter
    resolver: PlannedResolver | None
    shapes: Mapping[type, _Shape]
    """By the Python class of the resolver's value."""


@dataclass(frozen=True, slots=True)
class Plan:
    """One operation of one document, ready to run."""

    operation: OperationDefinitionNode
    root_typename: str
    roots: tuple[_Root, ...]
    variables: _Variables | None
    """The plan's own coercion of its variables, when they have the shape it knows."""

    @property
    def operation_type(self) -> str:
        """`query` or `mutation`."""
        return self.operation.operation.value

    @property
    def root_fields(self) -> list[str]:
        """What a trace names of the operation (`top_level_fields`)."""
        return top_level_fields(self.operation)

    def coerce(self, schema: GraphQLSchema, variables: dict[str, Any] | None) -> VariableValues | None:
        """The variables as the executor would coerce them; None when they do not fit (the
        executor's full path reports that, with its errors). Variables of the common shape go
        through the plan's own coercion (`_Variables`), the rest through graphql-core's."""
        if self.variables is not None and variables is not None:
            coerced_here = self.variables.coerce(variables)
            if coerced_here is not None:
                return coerced_here
        coerced = get_variable_values(
            schema, self.operation.variable_definitions or (), variables or {}, max_errors=50, hide_suggestions=True
        )
        return coerced if isinstance(coerced, VariableValues) else None

    async def run(self, context: object, variables: VariableValues) -> GraphQLExecutionResult:
        """Execute: each root field in order (serially, as a mutation's are), then complete its value."""
        data: dict[str, Any] = {}
        errors: list[GraphQLError] = []
        for root in self.roots:
            if root.resolver is None:
                data[root.key] = self.root_typename
                continue
            assert root.definition is not None
            try:
                arguments = get_argument_values(root.definition, root.nodes[0], variables, hide_suggestions=True)
                value = await root.resolver(context, **root.convert(arguments))
            except Exception as error:  # the executor reports it at the field, and null propagates to data
                errors.append(located_error(error, list(root.nodes), [root.key]))
                return GraphQLExecutionResult(None, errors)
            completed = _complete(root, value, errors)
            if completed is None:
                return GraphQLExecutionResult(None, errors)
            data[root.key] = completed
        return GraphQLExecutionResult(data, errors or None)


def top_level_fields(operation: OperationDefinitionNode) -> list[str]:
    """The names (not the aliases) of the fields written at the operation's top level, in order:
    what the operation's span says it asked for, whichever path executes it."""
    return [node.name.value for node in operation.selection_set.selections if isinstance(node, FieldNode)]


def _shape(root: _Root, value: object) -> _Shape | None:
    """How `value` is answered: by its class, or the nearest base class that is a member (as the
    executor's `isinstance` check accepts a subclass)."""
    shape = root.shapes.get(type(value))
    if shape is None:
        shape = next((root.shapes[base] for base in type(value).__mro__ if base in root.shapes), None)
    return shape


def _complete(root: _Root, value: object, errors: list[GraphQLError]) -> dict[str, Any] | None:
    """The value's selected fields; None (and the error) where the executor would null the root."""
    shape = _shape(root, value)
    if shape is None:
        problem = TypeError(f"a value of {type(value).__name__} is none of the field's types")
        errors.append(located_error(problem, list(root.nodes), [root.key]))
        return None
    answer: dict[str, Any] = {}
    for leaf in shape.leaves:
        if leaf.attribute is None:
            answer[leaf.key] = shape.typename
            continue
        path = [root.key, leaf.key]
        try:
            raw = getattr(value, leaf.attribute)
            serialized = None if raw is None else leaf.serialize(raw)
            if raw is not None and serialized is None:
                raise TypeError(f"Expected `{leaf.description}` to serialize to a non-null value.")
        except Exception as error:
            errors.append(located_error(error, list(leaf.nodes), path))
            if leaf.non_null:
                return None
            serialized = None
        if serialized is None and leaf.non_null:
            # graphql-core raises this as a TypeError, which the schema masks as unexpected: so here.
            problem = TypeError(f"Cannot return null for non-nullable field {leaf.description}.")
            errors.append(located_error(problem, list(leaf.nodes), path))
            return None
        answer[leaf.key] = serialized
    return answer


def plan(
    schema: Schema, document: DocumentNode, operation_name: str | None, resolvers: PlannedResolvers
) -> Plan | None:
    """The plan of a *valid* document's operation, or None when a step of it is not plannable."""
    operation = get_operation_ast(document, operation_name)
    if operation is None or operation.directives:
        return None
    root_type = schema._schema.get_root_type(operation.operation)
    if root_type is None:
        return None
    planning = _Planning(schema, document, resolvers)
    try:
        fields = planning.collect(root_type, operation.selection_set)
        roots = tuple(planning.root(root_type, key, nodes) for key, nodes in fields.items())
    except _Unplannable:
        return None
    return Plan(operation, root_type.name, roots, _Variables.of(planning.schema, operation))


_NOT_GIVEN: Any = Undefined


@dataclass(frozen=True, slots=True)
class _InputField:
    name: str
    out_name: str
    leaf: GraphQLScalarType | GraphQLEnumType
    non_null: bool
    required: bool
    default: Any
    """The field's coerced default (`Undefined`: none)."""


@dataclass(frozen=True, slots=True)
class _Variable:
    name: str
    signature: GraphQLVariableSignature
    fields: tuple[_InputField, ...]
    names: frozenset[str]
    out_type: Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class _Variables:
    """graphql-core's coercion of an operation's variables, done directly for the shape the
    gateway's clients send: every variable a non-null input object (no default of its own) whose
    fields are scalars or enums. A value it is not sure of (a variable missing or null, not an
    object, an unknown field, a field missing, null or that its type refuses) gives None, and
    graphql-core's coercion decides, with its errors. Otherwise the result is graphql-core's own:
    the same sources, the same values under the same names (tests compare the two)."""

    variables: tuple[_Variable, ...]

    @classmethod
    def of(cls, schema: GraphQLSchema, operation: OperationDefinitionNode) -> _Variables | None:
        compiled: list[_Variable] = []
        for definition in operation.variable_definitions or ():
            signature = get_variable_signature(schema, definition)
            if isinstance(signature, GraphQLError) or definition.default_value or definition.directives:
                return None
            if not is_non_null_type(signature.type):
                return None
            input_type = signature.type.of_type
            if not is_input_object_type(input_type) or input_type.is_one_of:
                return None
            fields: list[_InputField] = []
            for name, field in input_type.fields.items():
                leaf = get_nullable_type(field.type)
                if not isinstance(leaf, GraphQLScalarType | GraphQLEnumType):
                    return None
                default = coerce_default_value(field)
                required = is_required_input_field(field)
                fields.append(
                    _InputField(name, field.out_name or name, leaf, is_non_null_type(field.type), required, default)
                )
            names = frozenset(input_type.fields)
            compiled.append(_Variable(signature.name, signature, tuple(fields), names, input_type.out_type))
        return cls(tuple(compiled))

    def coerce(self, given: dict[str, Any]) -> VariableValues | None:
        sources: dict[str, VariableValueSource] = {}
        coerced: dict[str, Any] = {}
        for variable in self.variables:
            value = given.get(variable.name)
            if type(value) is not dict or not variable.names.issuperset(value):
                return None
            sources[variable.name] = VariableValueSource(variable.signature, value)
            fields: dict[str, Any] = {}
            for field in variable.fields:
                raw = value.get(field.name, _NOT_GIVEN)
                if raw is _NOT_GIVEN:
                    if field.required:
                        return None
                    if field.default is not _NOT_GIVEN:
                        fields[field.out_name] = field.default
                    continue
                if raw is None:
                    if field.non_null:
                        return None
                    fields[field.out_name] = None
                    continue
                try:
                    fields[field.out_name] = field.leaf.coerce_input_value(raw)
                except Exception:  # graphql-core's coercion says why, with its message
                    return None
                if fields[field.out_name] is _NOT_GIVEN:
                    return None
            coerced[variable.name] = variable.out_type(fields)
        return VariableValues(sources, coerced)


class _Planning:
    """What planning one document needs at hand."""

    def __init__(self, schema: Schema, document: DocumentNode, resolvers: PlannedResolvers) -> None:
        self.strawberry = schema
        self.schema: GraphQLSchema = schema._schema
        self.fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        self.resolvers = resolvers

    def root(self, root_type: GraphQLObjectType, key: str, nodes: list[FieldNode]) -> _Root:
        name = nodes[0].name.value
        if name == _TYPENAME:
            return _Root(key, tuple(nodes), None, dict, None, {})
        resolver = self.resolvers.get((root_type.name, name))
        definition = root_type.fields.get(name)
        if resolver is None or definition is None or not isinstance(definition.type, GraphQLNonNull):
            raise _Unplannable
        field = definition.extensions.get(_BACKREF)
        if not isinstance(field, StrawberryField) or field.extensions:  # an extension may reshape the arguments
            raise _Unplannable
        named = get_named_type(definition.type)
        if is_object_type(named):
            possible: list[GraphQLObjectType] = [named]
        elif is_abstract_type(named):
            possible = list(self.schema.get_possible_types(named))
        else:
            raise _Unplannable
        selection = _merged_selection(nodes)
        shapes = {each: self.shape(each, selection) for each in possible}
        convert = _compiled_arguments(field, self.strawberry.config) or self.arguments(field)
        return _Root(
            key, tuple(nodes), definition, convert, resolver, {_origin(t): shape for t, shape in shapes.items()}
        )

    def arguments(self, field: StrawberryField) -> Converter:
        """Strawberry's own conversion of a field's arguments."""
        registry, config = self.strawberry.schema_converter.scalar_registry, self.strawberry.config
        return lambda arguments: convert_arguments(arguments, field.arguments, scalar_registry=registry, config=config)

    def shape(self, object_type: GraphQLObjectType, selection: SelectionSetNode) -> _Shape:
        return _Shape(object_type.name, tuple(_leaves(object_type, self.collect(object_type, selection))))

    def collect(self, runtime: GraphQLObjectType, selection_set: SelectionSetNode) -> dict[str, list[FieldNode]]:
        """The executor's field collection for one concrete type: fields by response key, in order;
        each named fragment entered once."""
        fields: dict[str, list[FieldNode]] = {}
        visited: set[str] = set()

        def walk(selections: SelectionSetNode) -> None:
            for selection in selections.selections:
                if selection.directives:
                    raise _Unplannable
                if isinstance(selection, FieldNode):
                    key = selection.alias.value if selection.alias else selection.name.value
                    fields.setdefault(key, []).append(selection)
                elif isinstance(selection, InlineFragmentNode):
                    condition = selection.type_condition
                    if condition is None or self.applies(condition.name.value, runtime):
                        walk(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    if name in visited:
                        continue
                    visited.add(name)
                    fragment = self.fragments.get(name)
                    if fragment is None or fragment.directives:
                        raise _Unplannable
                    if self.applies(fragment.type_condition.name.value, runtime):
                        walk(fragment.selection_set)
                else:
                    raise _Unplannable

        walk(selection_set)
        return fields

    def applies(self, condition: str, runtime: GraphQLObjectType) -> bool:
        conditional = self.schema.get_type(condition)
        if conditional is runtime:
            return True
        return is_abstract_type(conditional) and self.schema.is_sub_type(conditional, runtime)


def _compiled_arguments(field: StrawberryField, config: StrawberryConfig) -> Converter | None:
    """Strawberry's conversion, done the same way without its general machinery, for arguments
    that are input types whose fields are all strings or enums (graphql-core's coercion has already
    made them `str` and enum members, which Strawberry passes on as they are); None otherwise."""
    converters: list[tuple[str, str, Callable[[Any], object]]] = []
    for argument in field.arguments:
        build = _input_builder(argument.type, config)
        if build is None:
            return None
        converters.append((config.name_converter.from_argument(argument), argument.python_name, build))

    def convert(arguments: dict[str, Any]) -> dict[str, Any]:
        return {python: build(arguments[name]) for name, python, build in converters if name in arguments}

    return convert


def _input_builder(kind: object, config: StrawberryConfig) -> Callable[[Any], object] | None:
    definition = getattr(kind, "__strawberry_definition__", None)
    if not isinstance(definition, StrawberryObjectDefinition) or not definition.is_input or definition.from_input:
        return None
    names: list[tuple[str, str]] = []
    for input_field in definition.fields:
        resolved = input_field.resolve_type(type_definition=definition)
        if resolved is not str and not isinstance(resolved, StrawberryEnumDefinition):
            return None
        names.append((config.name_converter.from_field(input_field), input_field.python_name))
    unset = {
        input_field.python_name: None
        for input_field in definition.fields
        if input_field.default_value is MISSING and input_field.default_factory is MISSING
    }
    origin = definition.origin

    def build(value: Any) -> object:
        if value is None:
            return None
        given = {python: value[name] for name, python in names if name in value}
        return origin(**(unset | given))

    return build


def _merged_selection(nodes: list[FieldNode]) -> SelectionSetNode:
    """The sub-selections of every node of one response key, as one selection set."""
    selections = [selection for node in nodes if node.selection_set for selection in node.selection_set.selections]
    return SelectionSetNode(selections=tuple(selections))


def _origin(object_type: GraphQLObjectType) -> type:
    definition = object_type.extensions.get(_BACKREF)
    if not isinstance(definition, StrawberryObjectDefinition):
        raise _Unplannable
    return definition.origin


def _leaves(object_type: GraphQLObjectType, fields: Mapping[str, list[FieldNode]]) -> Iterator[_Leaf]:
    for key, nodes in fields.items():
        name = nodes[0].name.value
        described = f"{object_type.name}.{name}"
        if name == _TYPENAME:
            yield _Leaf(key, None, str, True, tuple(nodes), described)
            continue
        definition = object_type.fields.get(name)
        if definition is None:
            raise _Unplannable
        field = definition.extensions.get(_BACKREF)
        leaf_type = get_named_type(definition.type)
        if not isinstance(field, StrawberryField) or not field.is_basic_field or not is_leaf_type(leaf_type):
            raise _Unplannable
        if field.default_resolver is not getattr:  # Strawberry's default: the attribute, as read here
            raise _Unplannable
        non_null = isinstance(definition.type, GraphQLNonNull)
        serialize = leaf_type.serialize
        yield _Leaf(key, field.python_name, serialize, non_null, tuple(nodes), described)
