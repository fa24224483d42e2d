using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Lckv.Chat;
using Lckv.Formats;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;

namespace Lckv.Tests.Chat;

/// <summary>The Jinja subset piece by piece. Every expected string was rendered by Jinja2 3.1 with Hugging Face's
/// settings (trim_blocks, lstrip_blocks, HF's tojson), so these pin the reference's behaviour, not ours.</summary>
public sealed class ChatTemplateTests
{
    private static string Render(string source, Dictionary<string, object?>? variables = null, IReadOnlyList<ChatMessage>? messages = null,
        bool addGenerationPrompt = false) =>
        ChatTemplate.Parse(source).Render(new ChatTemplateInput
        {
            Messages = messages ?? [],
            AddGenerationPrompt = addGenerationPrompt,
            BosToken = "<s>",
            EosToken = "</s>",
            Date = new DateOnly(2026, 1, 15),
            Variables = variables ?? [],
        });

    /// <summary>Render variables from a JSON object, as a request's extra fields would arrive.</summary>
    private static Dictionary<string, object?> Vars(string json) =>
        JsonDocument.Parse(json).RootElement.EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value.Clone());

    private static ChatTemplateException Fails(string source, string variables = "{}") =>
        Assert.Throws<ChatTemplateException>(() => Render(source, Vars(variables)));

    [Theory]
    [InlineData("a\n  {% if true %}\nX\n  {% endif %}\nb", "a\nX\nb")]                 // lstrip_blocks + trim_blocks
    [InlineData("a\n  {{ 'v' }}\nb", "a\n  v\nb")]                                     // neither applies to {{ }}
    [InlineData("{{ 'a' }}  {% if true %}x{% endif %}", "a  x")]                       // lstrip only at a line start
    [InlineData("a  {%- if true -%}  x  {%- endif %}\n\nb", "ax\nb")]                  // '-' strips newlines too
    [InlineData("a {#- c -#} b\n{# c #}\nc", "ab\nc")]                                 // comments take both rules
    [InlineData("  {# c #}\nd\n", "d")]                                                // one trailing newline dropped
    [InlineData("x\n\n", "x\n")]
    [InlineData("x\r\ny\r\n", "x\ny")]                                                 // source newlines normalised
    [InlineData("  {%+ if true %}y{% endif %}", "  y")]                                // '+' keeps the indentation
    [InlineData("{% if true +%}\nx{% endif %}{#+ c +#}\ny", "\nx\ny")]                // ... and the newline
    [InlineData("{%- for m in [1] -%}\n  {{ m }}\n{%- endfor -%}\n", "1")]
    [InlineData("{% if true %}\n    indented {{ 1 }}\n{% endif %}\n", "    indented 1\n")]
    [InlineData("{{ '{{ x }}' }}{# {{ not output }} #}", "{{ x }}")]
    [InlineData("a\n  {% raw %}{{ x }} {% if %}\n  {% endraw %}\nb", "a\n{{ x }} {% if %}\nb")]       // raw text, tags' rules at its ends
    [InlineData("{% raw -%}\n  {#- kept -#}  {%- endraw %}|", "{#- kept -#}|")]
    public void WhitespaceControlMatchesJinja(string source, string expected) => Assert.Equal(expected, Render(source));

    /// <summary>Loops (variables, else, filters, break/continue, nesting), scoping, operators, filters, tests, methods,
    /// tojson, macros and strftime_now, each against Jinja2's output.</summary>
    [Theory]
    [InlineData("{% for i in [1,2,3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}",
        "{}",
        "10TrueFalse332;21FalseFalse321;32FalseTrue310;")]
    [InlineData("{% for i in [] %}x{% else %}empty{% endfor %}",
        "{}",
        "empty")]
    [InlineData("{% for i in range(10) if i % 3 == 0 %}{{ i }}{{ loop.last }}{{ loop.length }},{% endfor %}",
        "{}",
        "0False4,3False4,6False4,9True4,")]
    [InlineData("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}",
        "{}",
        "02")]
    [InlineData("{% for a in [[1,2],[3]] %}{% for b in a %}{{ loop.index }}{{ b }}{% endfor %}{{ loop.index }};{% endfor %}",
        "{}",
        "11221;132;")]
    [InlineData("{% for i in [1,2,3] %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('a','b') }};{% endfor %}",
        "{}",
        "-2-a;1-3-b;2--a;")]
    [InlineData("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
        "{\"d\": {\"b\": 1, \"a\": [1, \"x\", null, true, 1.5]}}",
        "b=1;a=[1, 'x', None, True, 1.5];")]
    [InlineData("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}",
        "{}",
        "21")]
    [InlineData("{% set ns = namespace(a=1) %}{% for i in [1,2] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}",
        "{}",
        "4")]
    [InlineData("{% if true %}{% set y = 'set in if' %}{% endif %}{{ y }}",
        "{}",
        "set in if")]
    [InlineData("{% set messages = messages[1:] %}{{ messages | length }}",
        "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"u\"}]}",
        "1")]
    [InlineData("{{ '<t>' + '\\n' + c | trim + '</t>' }}",
        "{\"c\": \"  \\t x \\r\\n\"}",
        "<t>\nx</t>")]
    [InlineData("{{ x | tojson }}",
        "{\"x\": {\"a\": [1, 2.5, \"é\\\"\\n\\\\\", null, true], \"b\": {}, \"c\": [], \"d\": \"\\u0001<>&'\"}}",
        "{\"a\": [1, 2.5, \"é\\\"\\n\\\\\", null, true], \"b\": {}, \"c\": [], \"d\": \"\\u0001<>&'\"}")]
    [InlineData("{{ x | tojson(indent=4) }}",
        "{\"x\": {\"a\": [1, {\"z\": 2}], \"b\": {}, \"c\": []}}",
        "{\n    \"a\": [\n        1,\n        {\n            \"z\": 2\n        }\n    ],\n    \"b\": {},\n    \"c\": []\n}")]
    [InlineData("{{ x | tojson(indent=2, sort_keys=true) }}|{{ x | tojson(separators=(',', ':')) }}|{{ x|tojson(ensure_ascii=true) }}",
        "{\"x\": {\"b\": \"é🦙\", \"a\": 1}}",
        "{\n  \"a\": 1,\n  \"b\": \"é🦙\"\n}|{\"b\":\"é🦙\",\"a\":1}|{\"b\": \"\\u00e9\\ud83e\\udd99\", \"a\": 1}")]
    [InlineData("{{ '  a b  \\t\\n' | trim }}|{{ 'xxaxx'.strip('x') }}|{{ ' a  b '.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'x</think>y</think>z'.split('</think>')[-1] }}",
        "{}",
        "a b|a|['a', 'b']|['a', 'b', '', 'c']|['a', 'b,c']|['a,b', 'c']|z")]
    [InlineData("{{ msgs | selectattr('role', 'equalto', 'user') | list | length }}|{{ msgs | rejectattr('role', 'equalto', 'user') | map(attribute='content') | join(', ') }}|{{ ['a', 'code_interpreter', 'b'] | reject('equalto', 'code_interpreter') | join(', ') }}",
        "{\"msgs\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}, {\"role\": \"user\", \"content\": \"c\"}]}",
        "2|b|a, b")]
    [InlineData("{{ undefined_x | default('dflt') }}{{ '' | default('e', true) }}{{ '12' | int + 1 }}{{ '1.5' | float }}{{ -3 | abs }}{{ 3.14159 | round(2) }}{{ [1, 2] | first }}{{ 'abc' | list }}{{ 5 | string + 'a' }}",
        "{}",
        "dflte131.533.141['a', 'b', 'c']5a")]
    [InlineData("{{ x is defined }}{{ y is defined }}{{ x is none }}{{ y is none }}{{ z is not none }}{{ not y is defined }}{{ 9 is divisibleby 3 }}{{ 'a' is string }}{{ {} is mapping }}{{ 1 is number }}",
        "{\"x\": null, \"z\": 1}",
        "TrueFalseTrueFalseTrueTrueTrueTrueTrueTrue")]
    [InlineData("{{ 'ab' in 'cabd' }}{{ 1 in [1,2] }}{{ 'k' in {'k': 1} }}{{ 'q' not in 'abc' }}{{ 1 < 2 < 3 }}{{ (1 == 1) != (2 % 2 == 0) }}{{ 1 == 1.0 }}{{ true == 1 }}",
        "{}",
        "TrueTrueTrueTrueTrueFalseTrueTrue")]
    [InlineData("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1.5 + 1 }} {{ 1e20 }} {{ 0.0001 }} {{ 3 - 1 - 1 }} {{ 1 + 2 * 3 }}",
        "{}",
        "3 -4 2 3.5 1024 2.5 1e+20 0.0001 1 7")]
    [InlineData("{{ 'a' ~ 1 ~ none ~ nothing }}|{{ none }}|{{ true }}|{{ [1, 'a', none] }}|{{ {'a': 1} }}|{{ (1, 2) }}|{{ '%s-%d' % ('x', 3) }}",
        "{}",
        "a1None|None|True|[1, 'a', None]|{'a': 1}|(1, 2)|x-3")]
    [InlineData("{{ 'héllo🦙'[-1] }}{{ 'héllo🦙' | length }}{{ 'héllo🦙'[1:3] }}{{ [1,2,3][::-1] }}{{ [1,2,3][5] }}|",
        "{}",
        "🦙6él[3, 2, 1]|")]
    [InlineData("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', punct='?') }}",
        "{}",
        "Hi a! Hi b?")]
    [InlineData("{% set x %}inner {{ 1 + 1 }}{% endset %}[{{ x }}]",
        "{}",
        "[inner 2]")]
    [InlineData("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %A %B %j') }}|{{ strftime_now('%-d %-m %y %a') }}",
        "{}",
        "15 Jan 2026|2026-01-15 Thursday January 015|15 1 26 Thu")]
    [InlineData("{% for m in msgs %}{{ m.role }}:{{ m['content'] }}[{{ m.tool_calls }}]{% if m.tool_calls is defined %}T{% endif %}{% endfor %}",
        "{\"msgs\": [{\"role\": \"user\", \"content\": \"a\"}]}",
        "user:a[]")]
    [InlineData("{{ 'yes' if x else 'no' }}{{ 'A' if not x }}{{ 'a' if false else 'b' if false else 'c' }}",
        "{\"x\": false}",
        "noAc")]

    [InlineData("{{ '{} and {}'.format('a', 1) }}|{{ '{1}{0}{{x}}'.format('a', 'b') }}|{{ 0 is sameas false }}{{ false is sameas false }}",
        "{}",
        "a and 1|ba{x}|FalseTrue")]
    [InlineData("{{ x | tojson }}|{{ x[4] }}|{{ x[4] > 1 }}{{ x[4] is integer }}|{{ (1, 2) + (3,) }}",
        "{\"x\": [1.0, 0.5, 1e100, -0.0, 12345678901234567890]}",
        "[1.0, 0.5, 1e+100, -0.0, 12345678901234567890]|12345678901234567890|TrueTrue|(1, 2, 3)")]
    public void ExpressionsAndStatementsMatchJinja(string source, string variables, string expected)
    {
        var vars = Vars(variables);
        var messages = vars.Remove("messages", out var m) ? (JsonElement?)m : null;
        string got = ChatTemplate.Parse(source).Render(new ChatTemplateInput
        {
            MessagesJson = messages, Date = new DateOnly(2026, 1, 15), Variables = vars,
        });
        Assert.Equal(expected, got);
    }

    /// <summary>Jinja2's lazy filters give generators: always true (even when empty), no len(); sort, unique, min and
    /// max ignore case unless told.</summary>
    [Fact]
    public void LazyFiltersAndCaseInsensitiveOrderingAreJinjas()
    {
        Assert.Equal("lazy filters are true|[]|bB|AabB|bA|b|31", Render("{% if [] | select %}lazy filters are true{% endif %}|{{ [] | select | list }}"
            + "|{{ \"bB\" | list | sort | join }}|{{ [\"b\", \"A\", \"a\", \"B\"] | sort | join }}|{{ [\"b\", \"A\", \"a\", \"B\"] | unique | join }}"
            + "|{{ [\"b\", \"A\"] | max }}|{{ [3, 1] | sort(reverse=true) | join }}"));
        Assert.Contains("object of type 'generator' has no len()", Fails("{{ [1] | select | length }}").Message);
        Assert.Equal("generators fail when walked", Render("{% if 5 | select %}generators fail when walked{% endif %}"));
        Assert.Contains("'int' object is not iterable", Fails("{{ 5 | select | list }}").Message);
        Assert.Contains("unsupported operand type(s) for %: 'list' and 'int'", Fails("{{ [] is odd }}").Message);
        Assert.Contains("'missing' is undefined", Fails("{{ missing | int }}").Message);
    }

    [Fact]
    public void MessageContentIsNeverReparsed()
    {
        var messages = new[] { new ChatMessage("user", "{{ 1 + 1 }} {% if x %}{# c #}{%- raw -%}\r\n\\n 🦙👩\u200d💻") };
        Assert.Equal("[{{ 1 + 1 }} {% if x %}{# c #}{%- raw -%}\r\n\\n 🦙👩\u200d💻]",
            Render("{% for m in messages %}[{{ m.content }}]{% endfor %}", messages: messages));
    }

    [Fact]
    public void RenderVariablesAreTheOnesTransformersPasses()
    {
        Assert.Equal("<s>|</s>|True|user",
            Render("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ messages[0].role }}", messages: [new ChatMessage("user", "x")],
                addGenerationPrompt: true));
        Assert.Equal("defined-None|undefined", Render("{{ 'defined' if tools is defined else 'undefined' }}-{{ tools }}|"
            + "{{ 'defined' if documents is defined else 'undefined' }}", new() { ["tools"] = null }));
        var e = Assert.Throws<LckvException>(() => Render("x", new() { ["bos_token"] = "again" }));
        Assert.Contains("bos_token", e.Message);
    }

    [Fact]
    public void StrftimeNowUsesTodayUnlessADateIsPinned()
    {
        var template = ChatTemplate.Parse("{{ strftime_now('%Y-%m-%d') }}");
        Assert.Equal("2024-02-29", template.Render(new ChatTemplateInput { Date = new DateOnly(2024, 2, 29) }));
        var before = DateOnly.FromDateTime(DateTime.UtcNow);
        string today = template.Render(new ChatTemplateInput());
        Assert.Contains(today, new[] { before.ToString("yyyy-MM-dd"), DateOnly.FromDateTime(DateTime.UtcNow).ToString("yyyy-MM-dd") });
    }

    [Theory]
    [InlineData("{% if %}", 1, "unexpected end of tag")]
    [InlineData("a\n{% for x in y %}", 2, "endfor")]
    [InlineData("{{ 1 + }}", 1, "unexpected end of tag")]
    [InlineData("\n\n{% endif %}", 3, "unexpected 'endif'")]
    [InlineData("{{ 'abc' | nosuchfilter }}", 1, "no filter named 'nosuchfilter'")]
    [InlineData("{{ 1 is nosuchtest }}", 1, "no test named 'nosuchtest'")]
    [InlineData("{% include 'x' %}", 1, "unsupported tag 'include'")]
    [InlineData("\n{% raw %}{{ x }}", 2, "missing '{% endraw %}'")]
    [InlineData("{{ 'unterminated }}", 1, "unterminated string")]
    [InlineData("x {{ y", 1, "unclosed tag")]
    [InlineData("{% for x in y %}{% endfor %}{% break %}", 1, "'break' outside a for loop")]
    [InlineData("{# open", 1, "unclosed comment")]
    public void SyntaxErrorsNameTheLine(string source, int line, string message)
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(source));
        Assert.Equal(line, e.Line);
        Assert.Contains(message, e.Message);
        Assert.StartsWith($"chat template line {line}: ", e.Message);
        Assert.False(e.RaisedByTemplate);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("{{ 1 + undefined_v }}", "'undefined_v' is undefined")]
    [InlineData("{{ undefined_v.attr }}", "'undefined_v' is undefined")]
    [InlineData("{{ none + 1 }}", "unsupported operand type(s) for +: 'NoneType' and 'int'")]
    [InlineData("{{ 'a' + 1 }}", "can only concatenate str (not \"int\") to str")]
    [InlineData("{{ messages[0].role }}", "list object has no element 0")]
    [InlineData("{% for x in none %}{% endfor %}", "'NoneType' object is not iterable")]
    [InlineData("{% set a.b = 1 %}", "only a namespace() takes attributes")]
    [InlineData("{{ 10 / 0 }}", "division by zero")]
    [InlineData("{{ x | tojson }}", "'x' is undefined")]
    [InlineData("{{ 1 in 'abc' }}", "requires string as left operand")]
    [InlineData("{{ [1].append(2) }}", "'list object' has no attribute 'append'")]   // the sandbox: no mutation
    public void RuntimeErrorsAreTheReferencesErrors(string source, string message)
    {
        var e = Fails("\n" + source);
        Assert.Equal(2, e.Line);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void RaiseExceptionCarriesTheTemplatesMessage()
    {
        var e = Fails("{% if messages | length == 0 %}\n  {{- raise_exception('Need ' ~ 1 ~ ' message') }}\n{% endif %}");
        Assert.True(e.RaisedByTemplate);
        Assert.Equal("Need 1 message", e.Reason);
        Assert.Equal(2, e.Line);
        Assert.Contains("Need 1 message", e.Message);
    }

    [Fact]
    public void DeepNestingIsAnErrorNotACrash()
    {
        Assert.Contains("nested more than", Assert.Throws<ChatTemplateException>(() =>
            ChatTemplate.Parse("{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}")).Message);
        Assert.Contains("nested more than", Assert.Throws<ChatTemplateException>(() =>
            ChatTemplate.Parse("{{ " + string.Concat(Enumerable.Repeat("not ", 5000)) + "x }}")).Message);
        Assert.Contains("nested more than", Assert.Throws<ChatTemplateException>(() =>
            ChatTemplate.Parse(string.Concat(Enumerable.Repeat("{% if x %}", 5000)))).Message);
        Assert.Equal("1", Render("{{ " + new string('(', 50) + "1" + new string(')', 50) + " }}"));
    }

    /// <summary>transformers' {% generation %} (training masks) renders its body.</summary>
    [Fact]
    public void GenerationBlocksRenderTheirBody() =>
        Assert.Equal("<a>hi</a>", Render("<a>{% generation %}{{ messages[0].content }}{% endgeneration %}</a>", messages: [new("assistant", "hi")]));

    [Fact]
    public void RunawayMacroRecursionIsAnErrorNotACrash()
    {
        var e = Fails("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        Assert.Contains("nested more than", e.Message);
    }

    [Fact]
    public void ATemplateIsReusableAcrossRenders()
    {
        var template = ChatTemplate.Parse("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}");
        Assert.Equal("2", template.Render(new ChatTemplateInput { Messages = [new("user", "a"), new("assistant", "b")] }));
        Assert.Equal("1", template.Render(new ChatTemplateInput { Messages = [new("user", "a")] }));
    }

    /// <summary>One parsed template serves many requests at once (the server shares it).</summary>
    [Fact]
    public void RendersConcurrently()
    {
        var template = ChatTemplate.Parse("{% set ns = namespace(s='') %}{% for m in messages %}{% set ns.s = ns.s + m.content %}"
            + "{{ loop.index }}{% endfor %}={{ ns.s }}");
        var results = new string[64];
        Parallel.For(0, results.Length, i => results[i] = template.Render(new ChatTemplateInput
        {
            Messages = Enumerable.Range(0, i % 7 + 1).Select(k => new ChatMessage("user", $"{i}.{k};")).ToList(),
        }));
        for (int i = 0; i < results.Length; i++)
        {
            int n = i % 7 + 1;
            Assert.Equal(string.Concat(Enumerable.Range(1, n)) + "=" + string.Concat(Enumerable.Range(0, n).Select(k => $"{i}.{k};")), results[i]);
        }
    }

    [Fact]
    public void LoadsTheTemplateOfACheckpointFolder()
    {
        using var dir = new TempDir();
        Assert.Null(ChatTemplate.FromCheckpoint(dir.Root));
        Assert.Contains("no chat template", Assert.Throws<LckvException>(() => ChatTemplate.Load(dir.Root)).Message);
        dir.WriteText("tokenizer_config.json", """{"bos_token": "<s>", "chat_template": "{{ bos_token }}A"}""");
        Assert.Equal("<s>A", ChatTemplate.Load(dir.Root).Render(new ChatTemplateInput { BosToken = "<s>" }));
        dir.WriteText("tokenizer_config.json", """{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}""");
        Assert.Equal("D", ChatTemplate.Load(dir.Root).Render(new ChatTemplateInput()));
        dir.WriteText("tokenizer_config.json", """{"chat_template": [{"name": "tool_use", "template": "T"}]}""");
        Assert.Contains("default", Assert.Throws<LckvException>(() => ChatTemplate.FromCheckpoint(dir.Root)).Message);
        dir.WriteText("tokenizer_config.json", """{"chat_template": null}""");
        Assert.Null(ChatTemplate.FromCheckpoint(dir.Root));
        dir.WriteText("chat_template.jinja", "J");   // transformers' own file wins over tokenizer_config.json
        Assert.Equal("J", ChatTemplate.Load(dir.Root).Render(new ChatTemplateInput()));
    }

    [Fact]
    public void ReadsTheSpecialTokensTransformersRendersWith()
    {
        using var dir = new TempDir();
        Assert.Equal((null, null), ChatTemplate.ReadSpecialTokens(dir.Root));
        dir.WriteText("tokenizer_config.json", """{"bos_token": {"content": "<s>", "lstrip": false}, "chat_template": "{{ bos_token }}|{{ eos_token }}"}""");
        dir.WriteText("special_tokens_map.json", """{"bos_token": "<ignored>", "eos_token": "</s>"}""");
        Assert.Equal(("<s>", "</s>"), ChatTemplate.ReadSpecialTokens(dir.Root));
        string messages = dir.WriteText("m.json", "[]");
        Assert.Equal("<s>|</s>", CliTests.Run("template", "render", "--model", dir.Root, "--messages", messages).Out);
        Assert.Equal("B|</s>", CliTests.Run("template", "render", "--model", dir.Root, "--messages", messages, "--bos-token", "B").Out);
        string gguf = dir.File("m.gguf");
        GgufWriter.Write(gguf, [new("tokenizer.ggml.tokens", GgufValue.Array(["<unk>", "<s>", "</s>"])),
            new("tokenizer.ggml.bos_token_id", GgufValue.UInt32(1)), new("tokenizer.ggml.eos_token_id", GgufValue.UInt32(2))], []);
        Assert.Equal(("<s>", "</s>"), ChatTemplate.ReadSpecialTokens(gguf));
    }

    [Fact]
    public void LoadsTheTemplateOfAGgufFile()
    {
        using var dir = new TempDir();
        string path = dir.File("m.gguf");
        GgufWriter.Write(path, [new("general.architecture", GgufValue.String("llama")),
            new("tokenizer.chat_template", GgufValue.String("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"))], []);
        Assert.Equal("<user>hi", ChatTemplate.Load(path).Render(new ChatTemplateInput { Messages = [new("user", "hi")] }));
        string bare = dir.File("bare.gguf");
        GgufWriter.Write(bare, [new("general.architecture", GgufValue.String("llama"))], []);
        Assert.Null(ChatTemplate.FromCheckpoint(bare));
    }

    [Fact]
    public void TheCommandPrintsExactlyTheRenderingWithoutANewline()
    {
        using var dir = new TempDir();
        string template = dir.WriteText("t.jinja", "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}{{ bos_token }}{% endif %}{{ tools | length }}");
        string messages = dir.WriteText("m.json", """{"messages": [{"role": "user", "content": "héllo 🦙"}], "tools": [1, 2]}""");
        var r = CliTests.Run("template", "render", "--template", template, "--messages", messages, "--add-generation-prompt", "--bos-token", "<B>");
        Assert.Equal((0, "", "user: héllo 🦙\n<B>2"), (r.Code, r.Err, r.Out));
        string plain = dir.WriteText("p.json", """[{"role": "user", "content": "x"}]""");
        Assert.Equal("user: x\n0", CliTests.Run("template", "render", "--template", template, "--messages", plain).Out);
    }

    [Fact]
    public void TheCommandsBadInputIsOneLine()
    {
        using var dir = new TempDir();
        string template = dir.WriteText("t.jinja", "{{ raise_exception('no thanks') }}");
        string messages = dir.WriteText("m.json", "[]");
        CliTests.AssertOneLineError(CliTests.Run("template", "render", "--template", template, "--messages", messages), "no thanks");
        CliTests.AssertOneLineError(CliTests.Run("template", "render", "--template", dir.File("missing.jinja"), "--messages", messages), "missing.jinja");
        CliTests.AssertOneLineError(CliTests.Run("template", "render", "--template", template, "--messages", dir.File("none.json")), "none.json");
        CliTests.AssertOneLineError(CliTests.Run("template", "render", "--template", template, "--messages", messages, "--date", "15/01/2026"), "--date");
        CliTests.AssertOneLineError(CliTests.Run("template", "render", "--messages", messages), "--template");
        CliTests.AssertOneLineError(CliTests.Run("template", "render", "--template", template, "--messages", dir.WriteText("bad.json", "{\"x\": 1}")), "messages");
        string lone = dir.WriteText("lone.json", """[{"role": "user", "content": "a\ud800b"}]""");
        CliTests.AssertOneLineError(CliTests.Run("template", "render", "--template", template, "--messages", lone), "unpaired surrogate");
        string broken = dir.WriteText("b.jinja", "line one\n{% if x %}");
        CliTests.AssertOneLineError(CliTests.Run("template", "render", "--template", broken, "--messages", messages), "line 2");
        CliTests.AssertOneLineError(CliTests.Run("template", "render", "--model", dir.Root, "--messages", messages), "no chat template");
    }

    /// <summary>The built command as its own process: what reaches stdout is the rendering's UTF-8 bytes and nothing
    /// more, whatever the console encoding.</summary>
    [Fact]
    public void TheCommandsStdoutIsTheUtf8Bytes()
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "Lckv.Cli.dll");
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet";
        using var dir = new TempDir();
        string template = dir.WriteText("t.jinja", "{{ messages[0].content }}");
        string messages = dir.WriteText("m.json", """[{"role": "user", "content": "é 日本 🦙\r\n\tend\n\n"}]""");
        var start = new ProcessStartInfo(dotnet) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { dll, "template", "render", "--template", template, "--messages", messages }) start.ArgumentList.Add(a);
        start.Environment["LANG"] = "C";
        using var p = Process.Start(start)!;
        using var bytes = new MemoryStream();
        p.StandardOutput.BaseStream.CopyTo(bytes);
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, err);
        Assert.Equal(Encoding.UTF8.GetBytes("é 日本 🦙\r\n\tend\n\n"), bytes.ToArray());
    }
}
